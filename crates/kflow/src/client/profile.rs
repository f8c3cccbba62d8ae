//! The CLI's token file: `$KFLOW_PROFILE`, else `$XDG_CONFIG_HOME/kflow/token`, else
//! `~/.config/kflow/token`. Written 0600 by `kflow login`; a file others can read is refused.

use std::path::PathBuf;

use super::http::Failure;

pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KFLOW_PROFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("kflow").join("token"))
}

pub fn read() -> Result<Option<String>, Failure> {
    let Some(p) = path() else {
        return Ok(None);
    };
    let meta = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::Usage(format!("cannot read {}: {e}", p.display()))),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Failure::Usage(format!(
                "{} holds a token but others can read it (mode {mode:04o}): run chmod 600 on it",
                p.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(&p)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?;
    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
}

pub fn write(token: &str) -> Result<PathBuf, Failure> {
    let p = path().ok_or_else(|| {
        Failure::Usage("no place for the token file: set HOME or KFLOW_PROFILE".into())
    })?;
    let fail = |e: std::io::Error| Failure::Usage(format!("cannot write {}: {e}", p.display()));
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&p).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    use std::io::Write;
    f.write_all(format!("{token}\n").as_bytes()).map_err(fail)?;
    Ok(p)
}
