//! Makes binaries find libtorch at run time without LD_LIBRARY_PATH: the libtorch directory
//! that tch builds against (`LIBTORCH`, set by `.cargo/config.toml`) becomes an rpath.
//! With the CUDA install of `scripts/setup.sh --cuda`, `libtorch_cuda.so` is linked even though
//! no symbol of it is referenced: its static initialisers register the CUDA backend.
//! Also stamps the binary with the git commit it was built from (`CLSNORM_BUILD`), which every
//! run records, so a number can be traced to the exact code that produced it.
//! And compiles the small C++ shim in `csrc/` (libtorch switches tch does not expose).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    stamp_build();
    stamp_versions();
    link_libtorch();
    compile_shim();
}

/// Compiles `csrc/autocast.cpp` (autocast per device type and dtype, TF32) and
/// `csrc/cpu_cache.cpp` (the caching CPU allocator) against the
/// libtorch headers that tch builds with.
fn compile_shim() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/cpu_cache.cpp");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run scripts/setup.sh (.cargo/config.toml points it at deps/)");
    };
    let include = libtorch.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/autocast.cpp")
        .file("csrc/cpu_cache.cpp")
        .compile("clsnorm_shim");
}

/// `CLSNORM_LIBTORCH_VERSION` (from the `version.py` of the torch package that `LIBTORCH` points
/// at, e.g. a GPU build against another libtorch) and `CLSNORM_TCH_VERSION` (from Cargo.lock),
/// which every run records; `unknown` where they cannot be read.
fn stamp_versions() {
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .map(|d| d.join("version.py"))
        .and_then(|p| {
            println!("cargo:rerun-if-changed={}", p.display());
            std::fs::read_to_string(p).ok()
        })
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLSNORM_LIBTORCH_VERSION={libtorch}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let tch = std::fs::read_to_string("Cargo.lock")
        .ok()
        .and_then(|t| {
            let at = t.find("name = \"tch\"\nversion = \"")?;
            let rest = &t[at + "name = \"tch\"\nversion = \"".len()..];
            rest.split('"').next().map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CLSNORM_TCH_VERSION={tch}");
}

/// `CLSNORM_BUILD` = `git describe` of the checkout (`<commit>`, `<commit>-dirty` when tracked
/// files differ from it), or `unknown` outside a git checkout (e.g. a crate tarball).
fn stamp_build() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    // `describe --dirty` refreshes the index first, so touched but unchanged files are clean.
    let build = git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CLSNORM_BUILD={build}");
    if let Some(out) = git(&["rev-parse", "--git-dir"]) {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={}", dir.join(f).display());
        }
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
}

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CLSNORM_LINK_CUDA");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let variant = libtorch.join("..").join(".variant");
    println!("cargo:rerun-if-changed={}", variant.display());
    let cuda_install = std::fs::read_to_string(&variant)
        .map(|v| v.trim() == "cuda")
        .unwrap_or(false);
    let forced = std::env::var("CLSNORM_LINK_CUDA").is_ok_and(|v| v == "1");
    if (cuda_install || forced) && lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
