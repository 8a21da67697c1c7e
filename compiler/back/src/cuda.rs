//! CUDA spellings for the C-style writer (NVRTC: no `<math.h>`, no `restrict`, no
//! `INFINITY`; `extern "C"` keeps kernel names unmangled).

use crate::cstyle::Target;

pub const TARGET: Target = Target {
    name: "cuda",
    prelude: r#"#define KERNEL extern "C" __global__ void
#define DEVICE __device__ static inline
#define GLOBAL
#define LOCAL __shared__
#define LOCAL_PTR
#define BARRIER() __syncthreads()
#define GROUP_ID ((int)blockIdx.x)
#define NUM_GROUPS ((int)gridDim.x)
#define RL_WARP_SHUFFLE 1
#define RL_SHFL_DOWN(v, s) __shfl_down_sync(0xffffffffu, (v), (s))
#define LOCAL_SIZE ((int)blockDim.x)
#define LOCAL_ID ((int)threadIdx.x)
#define RL_INF __int_as_float(0x7f800000)
#define RL_NAN __int_as_float(0x7fffffff)
"#,
    f16_header: "#include <cuda_fp16.h>\n",
    bf16_header: "#include <cuda_bf16.h>\n",
    f16_type: "__half",
    bf16_type: "__nv_bfloat16",
    f16_load: "__half2float({p}[{i}])",
    bf16_load: "__bfloat162float({p}[{i}])",
    u8_type: "unsigned char",
    split_global: false,
};
