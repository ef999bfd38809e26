//! Where the control socket lives, and the checks that keep another local user from taking its
//! place: whoever owns the socket path receives the operators' commands (`stop`, `reload`).
//!
//! The default directory is private: `$XDG_RUNTIME_DIR/herd`, else `/tmp/herd-UID`, created
//! mode 0700 and checked with `lstat` (a real directory, not a symlink, owned by this user,
//! no access for anyone else) before every use. A configured socket's directory must be owned
//! by this user or root and not writable by others (unless sticky, like `/tmp`). Whatever is
//! already at the socket path must be a socket of this user's. The client side checks the
//! same before connecting, and the peer's credentials after.

use std::{
    fs::{self, DirBuilder, Metadata},
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use nix::unistd::geteuid;

/// Why a socket path or its directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    /// It could not be created or inspected.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// It is a symbolic link, which another user may have planted.
    #[error("{path} is a symbolic link: refusing it (another user may have planted it)")]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// It is not what it should be.
    #[error("{path} exists and is not a {expected}: refusing it")]
    WrongType {
        /// The path.
        path: PathBuf,
        /// `socket` or `directory`.
        expected: &'static str,
    },
    /// Another user owns it.
    #[error("{path} is owned by uid {owner}, not by this user (uid {me}): refusing it")]
    ForeignOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The private directory is open to others.
    #[error("{path} has mode {mode:04o} but must be private (0700): refusing it (remove it and herd creates it)")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Others may create and replace files in the socket's directory.
    #[error("others may write to {path} (mode {mode:04o}): anyone could put their own socket there; use a private directory")]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The process answering on the socket runs as another user.
    #[error(
        "the process answering on {path} runs as uid {owner}, not as this user (uid {me}): refusing to talk to it"
    )]
    ForeignPeer {
        /// The socket.
        path: PathBuf,
        /// The peer's uid.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
}

impl From<SocketPathError> for io::Error {
    fn from(err: SocketPathError) -> Self {
        let kind = match &err {
            SocketPathError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, err)
    }
}

/// The directory of the default control socket: `$XDG_RUNTIME_DIR/herd` (a per-user tmpfs
/// that only its user may enter), else `herd-UID` in the temp directory.
pub(crate) fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute()) {
        Some(runtime) => runtime.join("herd"),
        None => std::env::temp_dir().join(format!("herd-{}", geteuid())),
    }
}

/// Before binding at `path`: makes sure its directory is safe (creating the default one, or a
/// missing configured one, mode 0700) and returns whether a socket of ours is already there.
pub(crate) fn prepare_for_bind(path: &Path) -> Result<bool, SocketPathError> {
    let dir = parent(path);
    if dir == default_dir() {
        ensure_private_dir(&dir)?;
    } else {
        if fs::symlink_metadata(&dir).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| SocketPathError::Io { path: dir.clone(), source })?;
        }
        check_shared_dir(&dir)?;
    }
    match lstat(path) {
        Ok(meta) => check_socket(path, &meta, false).map(|()| true),
        Err(SocketPathError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Before connecting to `path`: it must be a socket owned by this user (or root), in a
/// directory that passes the same checks as the server's.
pub(crate) fn check_before_connect(path: &Path) -> Result<(), SocketPathError> {
    let dir = parent(path);
    if dir == default_dir() {
        check_private_dir(&dir, &lstat(&dir)?)?;
    }
    check_socket(path, &lstat(path)?, true)
}

/// After connecting: the process on the other end must run as this user (or root).
pub(crate) fn check_peer(path: &Path, peer_uid: u32) -> Result<(), SocketPathError> {
    let me = geteuid().as_raw();
    if peer_uid != me && peer_uid != 0 {
        return Err(SocketPathError::ForeignPeer { path: path.to_owned(), owner: peer_uid, me });
    }
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn lstat(path: &Path) -> Result<Metadata, SocketPathError> {
    fs::symlink_metadata(path).map_err(|source| SocketPathError::Io { path: path.to_owned(), source })
}

/// Creates `dir` mode 0700 if it is missing, then checks it.
fn ensure_private_dir(dir: &Path) -> Result<(), SocketPathError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(SocketPathError::Io { path: dir.to_owned(), source }),
    }
    check_private_dir(dir, &lstat(dir)?)
}

/// A real directory, owned by this user, closed to everyone else.
fn check_private_dir(dir: &Path, meta: &Metadata) -> Result<(), SocketPathError> {
    check_kind_and_owner(dir, meta, "directory", false)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SocketPathError::NotPrivate { path: dir.to_owned(), mode });
    }
    Ok(())
}

/// A configured directory (symlinks followed: `/var/run` → `/run` is fine): owned by this user
/// or root, and nobody else may create files in it unless the sticky bit keeps them from
/// replacing ours.
fn check_shared_dir(dir: &Path) -> Result<(), SocketPathError> {
    let meta = fs::metadata(dir).map_err(|source| SocketPathError::Io { path: dir.to_owned(), source })?;
    check_kind_and_owner(dir, &meta, "directory", true)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(SocketPathError::WritableByOthers { path: dir.to_owned(), mode });
    }
    Ok(())
}

/// What is at a socket path: a socket (not a symlink) of this user's, or root's for a client.
fn check_socket(path: &Path, meta: &Metadata, root_may_own: bool) -> Result<(), SocketPathError> {
    check_kind_and_owner(path, meta, "socket", root_may_own)
}

fn check_kind_and_owner(
    path: &Path,
    meta: &Metadata,
    expected: &'static str,
    root_may_own: bool,
) -> Result<(), SocketPathError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(SocketPathError::Symlink { path: path.to_owned() });
    }
    let right_kind = if expected == "socket" { kind.is_socket() } else { kind.is_dir() };
    if !right_kind {
        return Err(SocketPathError::WrongType { path: path.to_owned(), expected });
    }
    let (owner, me) = (meta.uid(), geteuid().as_raw());
    if owner != me && !(root_may_own && owner == 0) {
        return Err(SocketPathError::ForeignOwner { path: path.to_owned(), owner, me });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herd-socket-path-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn an_open_directory_a_symlink_or_a_file_is_refused() {
        let dir = scratch("open");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = prepare_for_bind(&dir.join("x.sock")).expect_err("0777 without sticky");
        assert!(matches!(err, SocketPathError::WritableByOthers { .. }), "{err}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::write(dir.join("file.sock"), b"").expect("file");
        let err = prepare_for_bind(&dir.join("file.sock")).expect_err("a regular file");
        assert!(matches!(err, SocketPathError::WrongType { expected: "socket", .. }), "{err}");
        std::os::unix::fs::symlink("/nonexistent", dir.join("link.sock")).expect("symlink");
        let err = prepare_for_bind(&dir.join("link.sock")).expect_err("a symlink");
        assert!(matches!(err, SocketPathError::Symlink { .. }), "{err}");
        assert!(matches!(check_before_connect(&dir.join("link.sock")), Err(SocketPathError::Symlink { .. })));

        assert!(!prepare_for_bind(&dir.join("fresh.sock")).expect("a private dir is fine"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_private_directory_is_created_0700_and_refused_when_open() {
        let dir = scratch("private").join("herd");
        ensure_private_dir(&dir).expect("created");
        assert_eq!(fs::metadata(&dir).expect("stat").mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(matches!(ensure_private_dir(&dir), Err(SocketPathError::NotPrivate { mode: 0o755, .. })));
        let _ = fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn a_peer_of_another_user_is_refused() {
        let me = geteuid().as_raw();
        assert!(check_peer(Path::new("/s"), me).is_ok() && check_peer(Path::new("/s"), 0).is_ok());
        assert!(check_peer(Path::new("/s"), me + 4242).is_err());
    }
}
