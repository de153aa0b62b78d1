//! Makes binaries find libtorch at run time without LD_LIBRARY_PATH: the libtorch directory
//! that tch builds against (`LIBTORCH`, set by `.cargo/config.toml`) becomes an rpath.
//! With the CUDA install of `scripts/setup.sh --cuda`, `libtorch_cuda.so` is linked even though
//! no symbol of it is referenced: its static initialisers register the CUDA backend.
use std::path::PathBuf;

fn main() {
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
