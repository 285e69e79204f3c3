//! `peerpool identity generate|show`, and loading or creating the identity of a node.

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use peerpool_proto::crypto::{random_bytes, SecretKey};
use peerpool_proto::identity::{Identity, IdentityError, PowTarget, Stamp};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Identity subcommands.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Generate a new identity with a proof-of-work stamp and save it as identity.json.
    Generate {
        /// Proof-of-work difficulty (fractional allowed, e.g. 24.5).
        #[arg(long, default_value_t = 26.0)]
        expected_pow: f64,
        /// Data directory holding identity.json.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace an existing identity.json.
        #[arg(long)]
        force: bool,
    },
    /// Print the peer id and proof-of-work level of identity.json.
    Show {
        /// Data directory holding identity.json.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Why an identity file could not be used.
#[derive(Debug, Error)]
pub enum IdentityFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is invalid.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// The file exists and `--force` was not given.
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    /// The difficulty is out of range.
    #[error("{0}")]
    Difficulty(#[from] peerpool_proto::identity::PowDifficultyError),
}

/// `<data_dir>/identity.json`.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

/// Loads and checks identity.json (peer id, key pair, PoW ≥ `expected`).
pub fn load(path: &Path, expected: Option<&PowTarget>) -> Result<Identity, IdentityFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityFileError::Io {
        path: path.into(),
        source,
    })?;
    Identity::from_json(&text, expected).map_err(|source| IdentityFileError::Invalid {
        path: path.into(),
        source,
    })
}

/// Writes `identity` to `path` atomically, creating the directory first
/// ([`peerpool::persist::save_identity`], the project's one atomic write).
fn save(path: &Path, identity: &Identity) -> Result<(), IdentityFileError> {
    peerpool::persist::save_identity(path, identity).map_err(|source| IdentityFileError::Io {
        path: path.into(),
        source,
    })
}

/// Searches a stamp for a fresh key on every core, showing attempts per second and the
/// expected time left when `progress` is true.
pub fn generate(target: &PowTarget, progress: bool) -> Identity {
    let mut rng = rand::rng();
    let secret_key = SecretKey(random_bytes(&mut rng));
    let public_key = secret_key.public_key();
    let attempts = Arc::new(AtomicU64::new(0));
    let found = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Stamp>();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for _ in 0..threads {
        let (attempts, found, tx, target) = (attempts.clone(), found.clone(), tx.clone(), *target);
        let mut stamp: Stamp = random_bytes(&mut rand::rng());
        std::thread::spawn(move || {
            const SLICE: u64 = 4096;
            while !found.load(Ordering::Relaxed) {
                let hit = target.search(&public_key, &mut stamp, SLICE);
                attempts.fetch_add(SLICE, Ordering::Relaxed);
                if let Some(s) = hit {
                    found.store(true, Ordering::Relaxed);
                    let _ = tx.send(s);
                    return;
                }
            }
        });
    }
    drop(tx);
    let bar = if progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let expected = target.expected_attempts();
    let start = Instant::now();
    let stamp = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(stamp) => break Some(stamp),
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let n = attempts.load(Ordering::Relaxed) as f64;
                let rate = n / start.elapsed().as_secs_f64().max(1e-3);
                let left = (expected - n).max(0.0) / rate.max(1.0);
                bar.set_message(format!(
                    "searching proof of work {:.1}: {:.0} attempts, {:.2} M/s, expected time left ~{:.0} s",
                    target.difficulty(),
                    n,
                    rate / 1e6,
                    left
                ));
                bar.tick();
            }
        }
    };
    bar.finish_and_clear();
    // invariant: the worker threads only stop after sending a stamp.
    let stamp =
        stamp.unwrap_or_else(|| unreachable!("proof-of-work workers stopped without a result"));
    Identity::from_parts(secret_key, stamp)
}

/// Loads `<data_dir>/identity.json`, or creates it (with progress) when it does not exist.
pub fn load_or_create(data_dir: &Path, target: &PowTarget) -> Result<Identity, IdentityFileError> {
    let path = identity_path(data_dir);
    // Left by a generation killed before its rename; nothing saves identity.json now.
    if let Err(e) = peerpool::persist::remove_stale_temp_files(&path) {
        tracing::debug!(error = %e, "stale temporary files not removed");
    }
    if path.exists() {
        return load(&path, Some(target));
    }
    eprintln!(
        "no identity in {}: generating one (proof of work {})",
        data_dir.display(),
        target.difficulty()
    );
    let identity = generate(target, true);
    save(&path, &identity)?;
    eprintln!(
        "stored new identity {} in {}",
        identity.peer_id,
        path.display()
    );
    Ok(identity)
}

fn generate_cmd(expected_pow: f64, data_dir: &Path, force: bool) -> Result<(), IdentityFileError> {
    let target = PowTarget::new(expected_pow)?;
    let path = identity_path(data_dir);
    if path.exists() && !force {
        return Err(IdentityFileError::Exists(path));
    }
    let start = Instant::now();
    let identity = generate(&target, true);
    save(&path, &identity)?;
    println!(
        "generated {} (proof of work {} bits) in {:.1} s, stored in {}",
        identity.peer_id,
        identity.pow_bits(),
        start.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// Runs an identity subcommand.
pub fn run(command: IdentityCommand) -> ExitCode {
    let result = match command {
        IdentityCommand::Generate {
            expected_pow,
            data_dir,
            force,
        } => generate_cmd(
            expected_pow,
            &data_dir.unwrap_or_else(crate::default_data_dir),
            force,
        ),
        IdentityCommand::Show { data_dir } => {
            let path = identity_path(&data_dir.unwrap_or_else(crate::default_data_dir));
            load(&path, None).map(|id| {
                println!("peer_id: {}", id.peer_id);
                println!("proof_of_work: {} bits", id.pow_bits());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
