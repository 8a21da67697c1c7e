//! OpenCL C 1.2 spellings for the C-style writer (PoCL in tests: no fp16 arithmetic, so
//! half and bfloat16 inputs are widened by hand from their bits).

use crate::cstyle::Target;

pub const TARGET: Target = Target {
    name: "opencl",
    prelude: r#"#define KERNEL __kernel void
#define DEVICE static inline
#define GLOBAL __global
#define LOCAL __local
#define LOCAL_PTR __local
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)
#define GROUP_ID ((int)get_group_id(0))
#define NUM_GROUPS ((int)get_num_groups(0))
#define RL_WARP_SHUFFLE 0
#define LOCAL_SIZE ((int)get_local_size(0))
#define LOCAL_ID ((int)get_local_id(0))
#define RL_INF as_float(0x7f800000)
#define RL_NAN as_float(0x7fc00000)
"#,
    f16_header: "",
    bf16_header: "",
    f16_type: "half",
    bf16_type: "ushort",
    f16_load: "vload_half({i}, {p})",
    bf16_load: "as_float(((uint){p}[{i}]) << 16)",
    u8_type: "uchar",
    split_global: true,
};
