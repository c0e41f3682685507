//! Build and unpack of a ~100 MB release of mixed files, side by side with
//! `tar --zstd -cf` and `tar --zstd -xf` on the same tree, in the same run.
//!
//! Run: `CARGO_TARGET_DIR=/work/targets/release cargo bench -p release --bench bundle`
//! (set `BENCH_DIR` to generate the tree somewhere else than the temp dir).

// Test code: a panic is the failure report (as clippy.toml allows inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use release::unpack::unpack_into;
use release::{Store, TrustedKeys, UnpackLimits, bundle};

const RUNS: usize = 3;

/// xorshift64*: fast, deterministic filler.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "deploy", "release", "config", "value", "cluster", "agent", "ready", "socket",
            "timeout", "lockstep", "rollback", "fn", "let", "struct", "impl", "return", "=", "{",
            "}", "\n", "0", "42", "true", "error", "info",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            let w = WORDS[(self.next() % WORDS.len() as u64) as usize];
            v.extend_from_slice(w.as_bytes());
            v.push(b' ');
        }
        v.truncate(n);
        v
    }
}

fn generate(root: &Path) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut total = 0u64;
    let mut put = |rel: &str, data: Vec<u8>| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        total += data.len() as u64;
        fs::write(p, data).unwrap();
    };
    put(
        "release.toml",
        b"[release]\nservice = \"bench\"\nversion = \"1.0.0\"\n[run]\ncommand = [\"bin/app\"]\n[readiness]\nnotify = true\n".to_vec(),
    );
    put("bin/app", rng.bytes(8 * 1024 * 1024)); // a binary: mostly incompressible
    // 4000 small source/config files, 1-9 KiB, in 40 directories (~20 MB).
    for i in 0..4000 {
        let n = 1024 + (rng.next() % 8192) as usize;
        let data = rng.text(n);
        put(&format!("src/mod{:02}/file{i:04}.rs", i % 40), data);
    }
    // 40 medium compressible files of 512 KiB (~20 MB).
    for i in 0..40 {
        let data = rng.text(512 * 1024);
        put(&format!("assets/medium{i:02}.txt"), data);
    }
    // Large blobs: 2 x 16 MiB incompressible, 1 x 20 MiB compressible.
    for i in 0..2 {
        let data = rng.bytes(16 * 1024 * 1024);
        put(&format!("data/random{i}.bin"), data);
    }
    let data = rng.text(20 * 1024 * 1024);
    put("data/log.txt", data);
    fs::set_permissions(root.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
    total
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..RUNS).map(|_| f()).min().unwrap_or_default()
}

fn sh(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

fn rm(p: &Path) {
    if p.exists() {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(p).status();
        fs::remove_dir_all(p).unwrap();
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: only run when benchmarking.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let w = base.path();
    let src = w.join("src");
    let bytes = generate(&src);
    let mb = bytes as f64 / 1e6;
    println!("tree: {mb:.1} MB in {} files", 4000 + 40 + 3 + 2);

    let ours = w.join("ours.lsr");
    let theirs = w.join("theirs.tar.zst");
    let build_ours = best(|| {
        let t = Instant::now();
        bundle::build_file(&src, &ours, None).unwrap();
        t.elapsed()
    });
    let build_tar = best(|| {
        let _ = fs::remove_file(&theirs);
        let t = Instant::now();
        sh(Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(&theirs)
            .arg("-C")
            .arg(&src)
            .arg("."));
        t.elapsed()
    });

    let store_dir = w.join("store");
    let put_ours = best(|| {
        rm(&store_dir);
        let store = Store::open(&store_dir, UnpackLimits::default(), TrustedKeys::none()).unwrap();
        let t = Instant::now();
        store.put(&ours).unwrap();
        t.elapsed()
    });
    let raw_dir = w.join("raw");
    let unpack_ours = best(|| {
        rm(&raw_dir);
        fs::create_dir(&raw_dir).unwrap();
        let t = Instant::now();
        let f = fs::File::open(&ours).unwrap();
        let bundle_len = f.metadata().unwrap().len();
        unpack_into(f, &raw_dir, &UnpackLimits::default(), bundle_len).unwrap();
        t.elapsed()
    });
    let tar_dir = w.join("tar-x");
    let unpack_tar = best(|| {
        rm(&tar_dir);
        fs::create_dir(&tar_dir).unwrap();
        let t = Instant::now();
        sh(Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&theirs)
            .arg("-C")
            .arg(&tar_dir));
        t.elapsed()
    });

    let size = |p: &Path| fs::metadata(p).unwrap().len() as f64 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!("best of {RUNS} runs, MB/s of content ({mb:.1} MB):");
    println!(
        "  build   lockstep {:>7.3}s {:>7.1} MB/s -> {:.1} MB | tar --zstd -cf {:>7.3}s {:>7.1} MB/s -> {:.1} MB | ratio {:.2}x (goal <= 1.5x)",
        build_ours.as_secs_f64(),
        rate(build_ours),
        size(&ours),
        build_tar.as_secs_f64(),
        rate(build_tar),
        size(&theirs),
        build_ours.as_secs_f64() / build_tar.as_secs_f64()
    );
    println!(
        "  unpack  lockstep {:>7.3}s {:>7.1} MB/s (unpack_into)              | tar --zstd -xf {:>7.3}s {:>7.1} MB/s | ratio {:.2}x (goal <= 1.0x)",
        unpack_ours.as_secs_f64(),
        rate(unpack_ours),
        unpack_tar.as_secs_f64(),
        rate(unpack_tar),
        unpack_ours.as_secs_f64() / unpack_tar.as_secs_f64()
    );
    println!(
        "  put     lockstep {:>7.3}s {:>7.1} MB/s (hash + verify + unpack + syncfs + read-only + rename) | ratio to tar -xf {:.2}x",
        put_ours.as_secs_f64(),
        rate(put_ours),
        put_ours.as_secs_f64() / unpack_tar.as_secs_f64()
    );
    rm(&store_dir);
}
