//! Checks on what the person running a benchmark asked for, with messages that say what to do.

use std::fmt::Display;
use std::path::Path;

/// `value` must lie in `min..=max`.
pub fn in_range<T: PartialOrd + Display>(
    flag: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{flag} must be from {min} to {max}, got {value}"));
    }
    Ok(())
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: `path` is a valid NUL-terminated string and `stats` a properly sized out-parameter
    // that statvfs fills in completely on success.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    if result != 0 {
        return Err(format!(
            "cannot read the free space of {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Fails unless writing `bytes` to `dir` leaves at least 1 GiB free.
pub fn ensure_space(dir: &Path, bytes: u64, what: &str) -> Result<(), String> {
    const MARGIN_BYTES: u64 = 1 << 30;
    let available = available_bytes(dir)?;
    if bytes.saturating_add(MARGIN_BYTES) > available {
        return Err(format!(
            "{what} needs {:.1} GiB in {} but only {:.1} GiB are free (1 GiB is kept in reserve); free some space, ask for less, or choose another directory",
            gib(bytes),
            dir.display(),
            gib(available)
        ));
    }
    Ok(())
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_flag_and_the_bounds() {
        assert!(in_range("--producers", 1, 1, 10).is_ok());
        assert!(in_range("--producers", 10, 1, 10).is_ok());
        assert_eq!(
            in_range("--producers", 0, 1, 10).unwrap_err(),
            "--producers must be from 1 to 10, got 0"
        );
        assert!(in_range("--rate", 11u64, 1, 10).is_err());
    }

    #[test]
    fn free_space_is_known_for_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        assert!(available_bytes(Path::new("/no/such/dir")).is_err());
        let error = ensure_space(dir.path(), u64::MAX / 2, "the fill").unwrap_err();
        assert!(error.contains("the fill needs"), "{error}");
    }

    #[test]
    fn directory_sizes_add_up_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 123);
    }
}
