//! Writing a file safely: atomically through an exclusive temporary file beside the target,
//! never through a link or onto a special file, never over the input.

use crate::error::{Result, VidkvError};

/// Writes `bytes` to `path` atomically: into a temporary file beside it (an unpredictable
/// name, created exclusively), then renamed over it, so a failed or interrupted write never
/// leaves a truncated file in place of an existing one. `path` must be a new name or a
/// regular file ([`check_output`]): a directory, device, FIFO or symbolic link is refused
/// with [`VidkvError::UnsafeOutput`] and left as it is.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io_error = |source| VidkvError::Io {
        path: path.display().to_string(),
        source,
    };
    check_output(path, None)?;
    let name = path
        .file_name()
        .ok_or_else(|| io_error(std::io::Error::other("the path names no file")))?;
    // An unpredictable name beside the target, created exclusively: a file or link planted
    // there makes the save fail instead of writing through it.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{:016x}.tmp", random_u64()));
    let temp = path.with_file_name(temp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(io_error)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = written {
        // Best effort: the temporary file is ours (created exclusively above).
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(source));
    }
    Ok(())
}

/// Checks that a save may write `output`: a new name, or an existing regular file that is
/// not a symbolic link and not `input` (the same file through any path or hard link).
pub fn check_output(output: &std::path::Path, input: Option<&std::path::Path>) -> Result<()> {
    let refuse = |reason: &str| {
        Err(VidkvError::UnsafeOutput {
            path: output.display().to_string(),
            reason: reason.to_string(),
        })
    };
    let Ok(meta) = std::fs::symlink_metadata(output) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link (name its target instead)");
    }
    if !meta.is_file() {
        return refuse("it exists and is not a regular file (a directory, device or FIFO)");
    }
    if let Some(input) = input {
        if let Ok(input_meta) = std::fs::metadata(input) {
            if same_file(&meta, &input_meta) {
                return refuse(
                    "it is the input file (the same file through another path or a hard link)",
                );
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len()
        && a.modified().ok() == b.modified().ok()
        && a.created().ok() == b.created().ok()
}

/// 64 random bits from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}
