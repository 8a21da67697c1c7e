//! NVRTC: CUDA C → PTX (`compute_XX`) or CUBIN (`sm_XX`) at run time, with a disk cache.
//!
//! NVRTC is loaded dynamically (cudarc, `fallback-dynamic-loading`), so builds need no
//! CUDA. When `libnvrtc.so.12` is not on the loader path it is opened by absolute path from
//! `$RLOBJ_NVRTC` (a file), `$CUDA_HOME/lib64`, or the `nvidia-cuda-nvrtc-cu12` pip wheel;
//! the handle stays open so cudarc's later `dlopen` by soname finds the same library.
//!
//! Cache: `$XDG_CACHE_HOME/rlobj/nvrtc` (else `~/.cache/rlobj/nvrtc`), one file per
//! (source, target, NVRTC version, options, rlobj version). Entries are written to a temp
//! file and renamed (safe for concurrent processes) and carry a checksum of their payload;
//! a corrupt entry is recompiled and replaced.

use cudarc::nvrtc::{result as nv, sys};
use rlobj_back::cstyle::KernelSource;
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// Bump when the cache entry format or the meaning of options changes.
const CACHE_FORMAT: &str = "rlobj-nvrtc-cache-v1";
const MAGIC: &[u8] = b"RLOBJNV1";

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX for `compute_XX` (loaded by the driver on XX and newer).
    Ptx,
    /// Machine code for exactly `sm_XX`.
    Cubin,
}

/// A failure to load or run NVRTC, or a compile error mapped to `.obj` spans.
#[derive(Clone, Debug, PartialEq)]
pub struct NvrtcError(pub String);

impl std::fmt::Display for NvrtcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NvrtcError {}

/// A compiled artifact.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text (NUL-free) or CUBIN bytes.
    pub bytes: Vec<u8>,
    pub log: String,
    /// Wall time of the NVRTC call (0 when served from the cache).
    pub millis: f64,
    pub cached: bool,
}

impl Compiled {
    /// The PTX as text (for `Output::Ptx`).
    pub fn ptx(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The loaded NVRTC: its version and the header directory for `cuda_fp16.h`/`cuda_bf16.h`.
#[derive(Debug)]
pub struct Nvrtc {
    pub version: (i32, i32),
    pub include: Option<PathBuf>,
    _lib: Option<libloading::Library>,
}

/// The pip wheels' `site-packages` directories (asked of `python3` once).
fn site_packages() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| PathBuf::from(l.trim()))
                .filter(|p| p.is_dir())
                .collect(),
            _ => Vec::new(),
        }
    })
}

fn wheel_path(rel: &str) -> Option<PathBuf> {
    site_packages()
        .iter()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
}

/// Loads NVRTC once; later calls return the same result.
pub fn nvrtc() -> Result<&'static Nvrtc, NvrtcError> {
    static NV: OnceLock<Result<Nvrtc, NvrtcError>> = OnceLock::new();
    NV.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// Whether cudarc can open libnvrtc by itself. With the `cuda` feature candle links CUDA at
/// build time (cudarc's `dynamic-linking`, which has no probe), so it is there by construction.
fn culib_present() -> bool {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: probing and opening a shared library; NVRTC has no unsafe initialisers.
        unsafe { sys::is_culib_present() }
    }
    #[cfg(feature = "cuda")]
    {
        true
    }
}

fn load() -> Result<Nvrtc, NvrtcError> {
    let mut lib = None;
    let present = culib_present();
    if !present {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(p) = std::env::var("RLOBJ_NVRTC") {
            candidates.push(PathBuf::from(p));
        }
        if let Ok(h) = std::env::var("CUDA_HOME") {
            candidates.push(Path::new(&h).join("lib64/libnvrtc.so.12"));
        }
        candidates.extend(wheel_path("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        for c in candidates.iter().filter(|c| c.exists()) {
            // SAFETY: as above; the handle is kept alive in `Nvrtc` for the process.
            if let Ok(l) = unsafe { libloading::Library::new(c) } {
                lib = Some(l);
                break;
            }
        }
        if lib.is_none() {
            return Err(NvrtcError(
                "NVRTC not found: install `pip install nvidia-cuda-nvrtc-cu12`, put \
                 libnvrtc.so.12 on LD_LIBRARY_PATH, or set RLOBJ_NVRTC=/path/to/libnvrtc.so.12"
                    .into(),
            ));
        }
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: valid out-pointers; the library is loaded.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| NvrtcError(format!("nvrtcVersion: {e:?}")))?;
    let include = std::env::var("CUDA_HOME")
        .ok()
        .map(|h| Path::new(&h).join("include"))
        .filter(|p| p.join("cuda_fp16.h").exists())
        .or_else(|| wheel_path("nvidia/cuda_runtime/include"));
    Ok(Nvrtc {
        version: (major, minor),
        include,
        _lib: lib,
    })
}

/// The cache directory (created on demand); `None` when no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rlobj").join("nvrtc"))
}

fn options(nv: &Nvrtc, arch: u32, out: Output) -> Vec<String> {
    let target = match out {
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
    };
    let mut o = vec![target, "--std=c++14".to_string()];
    if let Some(inc) = &nv.include {
        o.push(format!("--include-path={}", inc.display()));
    }
    o
}

fn key(src: &str, arch: u32, out: Output, nv: &Nvrtc, opts: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [
        CACHE_FORMAT,
        env!("CARGO_PKG_VERSION"),
        &format!("{}.{}", nv.version.0, nv.version.1),
        &format!("{arch}:{out:?}"),
        &opts.join("\u{1}"),
        src,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A cache entry's payload if its magic and checksum are intact.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    let rest = data.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then(|| payload.to_vec())
}

/// Writes an entry atomically (temp file + rename); failures only cost a recompile.
fn write_entry(path: &Path, payload: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&Sha256::digest(payload));
    data.extend_from_slice(payload);
    if std::fs::write(&tmp, &data).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Compiles (or fetches from the cache) kernel text for `sm_{arch}` / `compute_{arch}`.
pub fn compile(src: &KernelSource, arch: u32, out: Output) -> Result<Compiled, NvrtcError> {
    compile_with_cache(src, arch, out, cache_dir().as_deref())
}

/// As [`compile`], with an explicit cache directory (`None`: no cache).
pub fn compile_with_cache(
    src: &KernelSource,
    arch: u32,
    out: Output,
    cache: Option<&Path>,
) -> Result<Compiled, NvrtcError> {
    let nv = nvrtc()?;
    let opts = options(nv, arch, out);
    let ext = match out {
        Output::Ptx => "ptx",
        Output::Cubin => "cubin",
    };
    let entry = cache.map(|d| d.join(format!("{}.{ext}", key(&src.text, arch, out, nv, &opts))));
    if let Some(bytes) = entry.as_deref().and_then(read_entry) {
        return Ok(Compiled {
            bytes,
            log: String::new(),
            millis: 0.0,
            cached: true,
        });
    }
    let t0 = Instant::now();
    let (bytes, log) = run_nvrtc(src, &opts, out)?;
    let millis = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(e) = &entry {
        write_entry(e, &bytes);
    }
    Ok(Compiled {
        bytes,
        log,
        millis,
        cached: false,
    })
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let b: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&b).into_owned()
}

fn run_nvrtc(
    src: &KernelSource,
    opts: &[String],
    out: Output,
) -> Result<(Vec<u8>, String), NvrtcError> {
    let text = CString::new(src.text.as_str())
        .map_err(|_| NvrtcError("kernel source contains a NUL byte".into()))?;
    let name = c"rlobj.cu";
    let prog = nv::create_program(&text, Some(name))
        .map_err(|e| NvrtcError(format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: `prog` was just created and is destroyed exactly once below; `text` and
    // `name` outlive it.
    let result = unsafe {
        let compiled = nv::compile_program(prog, opts);
        let log = nv::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let r = match compiled {
            Err(_) => Err(NvrtcError(explain(src, &log))),
            Ok(()) => match out {
                Output::Ptx => nv::get_ptx(prog)
                    .map(|p| (c_chars_to_string(&p).into_bytes(), log))
                    .map_err(|e| NvrtcError(format!("nvrtcGetPTX: {e:?}"))),
                Output::Cubin => {
                    let mut size = 0usize;
                    match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                        Err(e) => Err(NvrtcError(format!("nvrtcGetCUBINSize: {e:?}"))),
                        Ok(()) => {
                            let mut buf = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char)
                                .result()
                                .map(|_| (buf, log))
                                .map_err(|e| NvrtcError(format!("nvrtcGetCUBIN: {e:?}")))
                        }
                    }
                }
            },
        };
        let _ = nv::destroy_program(prog);
        r
    };
    result
}

/// An NVRTC log with every `rlobj.cu(LINE)` shown with its source line and `.obj` span.
pub fn explain(src: &KernelSource, log: &str) -> String {
    let lines: Vec<&str> = src.text.lines().collect();
    let mut out = String::from("NVRTC failed to compile the generated CUDA:\n");
    for l in log.lines() {
        out.push_str(l);
        out.push('\n');
        let line = l
            .strip_prefix("rlobj.cu(")
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(line) = line {
            if let Some(code) = lines.get(line as usize - 1) {
                out.push_str(&format!("  | {line}: {}\n", code.trim()));
            }
            if let Some((n, sp)) = src.node_at_line(line) {
                out.push_str(&format!(
                    "  = from node %{} at .obj file {} bytes {}..{}\n",
                    n.0, sp.file, sp.start, sp.end
                ));
            }
        }
    }
    out
}

/// Path of `ptxas` (pip wheel `nvidia-cuda-nvcc-cu12`, `$CUDA_HOME/bin`, or `PATH`).
pub fn ptxas_path() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("CUDA_HOME") {
        let p = Path::new(&h).join("bin/ptxas");
        if p.exists() {
            return Some(p);
        }
    }
    if let Some(p) = wheel_path("nvidia/cuda_nvcc/bin/ptxas") {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ptxas"))
            .find(|p| p.exists())
    })
}

/// Assembles PTX for `sm_{arch}` with `ptxas` (a test helper: proves the PTX is valid for a
/// real architecture). `Err` carries ptxas's message, or says ptxas is missing.
pub fn ptxas_check(ptx: &str, arch: u32) -> Result<(), NvrtcError> {
    let ptxas = ptxas_path().ok_or_else(|| NvrtcError("ptxas not found".into()))?;
    let dir = std::env::temp_dir().join(format!("rlobj-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| NvrtcError(e.to_string()))?;
    let h = hex(&Sha256::digest(ptx.as_bytes()));
    let input = dir.join(format!("{}.ptx", &h[..16]));
    let output = dir.join(format!("{}.{arch}.cubin", &h[..16]));
    std::fs::write(&input, ptx).map_err(|e| NvrtcError(e.to_string()))?;
    let o = std::process::Command::new(ptxas)
        .arg(format!("-arch=sm_{arch}"))
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .map_err(|e| NvrtcError(format!("running ptxas: {e}")))?;
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    if o.status.success() {
        Ok(())
    } else {
        Err(NvrtcError(format!(
            "ptxas -arch=sm_{arch}: {}",
            String::from_utf8_lossy(&o.stderr)
        )))
    }
}
