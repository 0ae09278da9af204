use std::process::Command;

fn main() {
    // `sqlx::migrate!` embeds migrations/ at compile time; without this, adding a migration
    // file does not rebuild the crate and the new migration is silently missing from the binary.
    println!("cargo:rerun-if-changed=migrations");
    // The revision in outbox_relay_build_info: given by the builder (the Dockerfile's build has
    // no .git), else asked of git.
    println!("cargo:rerun-if-env-changed=OUTBOX_RELAY_REVISION");
    let revision = std::env::var("OUTBOX_RELAY_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OUTBOX_RELAY_REVISION={revision}");
}

fn git_revision() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Rebuilt when HEAD moves, so the label never names an older commit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        // A ref kept only in packed-refs has no file; cargo would then rebuild every time.
        let loose = git(&["symbolic-ref", "-q", "HEAD"])
            .map(|r| format!("{dir}/{r}"))
            .filter(|path| std::path::Path::new(path).exists());
        if let Some(path) = loose {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).filter(|r| !r.is_empty())
}
