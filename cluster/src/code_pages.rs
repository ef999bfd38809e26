//! Giving back the pages of code a process ran only to start.
//!
//! A process's resident set counts every page of its binaries it has executed, and starting
//! (parsing arguments, reading the configuration, connecting to Redis, spawning the workers,
//! building the app) runs far more code than the primary's loop, or a worker's requests, ever
//! will again: about 10 MiB of herd's binary. Those pages belong to the page cache and are
//! shared by the primary and its workers, so dropping them from one process's page tables
//! (`MADV_DONTNEED` on its executable file mappings) takes nothing from the others and costs no
//! I/O: what the process runs again is mapped back on first use, a minor fault. The primary
//! does it once every worker is ready, a worker once it is. The only `unsafe` is that
//! `madvise` call.
#![allow(unsafe_code)]

use nix::libc;

/// Drops this process's executable file mappings from its page tables; returns the bytes of
/// address space advised (what was resident of them is what the resident set shrinks by).
pub(crate) fn release() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
    maps.lines().filter_map(executable_file_mapping).map(|(start, len)| advise(start, len)).sum()
}

/// `start-end perms offset dev inode path`: the range of a private, executable mapping of a
/// file (the binary, libc, the dynamic loader; not `[vdso]`, not anonymous memory).
fn executable_file_mapping(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let path = fields.nth(3)?;
    if perms != "r-xp" || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    (end > start).then(|| (start, end - start))
}

fn advise(start: usize, len: usize) -> usize {
    // SAFETY: the range is one whole mapping of this process, read from /proc/self/maps, that
    // maps a file privately, readable and executable, never writable: its pages are the file's
    // own, unmodified (relocations live in other, writable mappings). MADV_DONTNEED on such a
    // mapping only drops the page-table entries; the next access faults the same bytes back in
    // from the page cache, so no code or data the process relies on changes.
    let done = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if done == 0 {
        len
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_file_mappings_are_released() {
        let exe = "55d0a0000000-55d0a1000000 r-xp 00001000 fd:01 1234 /usr/bin/herd";
        assert_eq!(executable_file_mapping(exe), Some((0x55d0_a000_0000, 0x100_0000)));
        for other in [
            "55d0a1000000-55d0a1100000 r--p 01000000 fd:01 1234 /usr/bin/herd",
            "55d0a1100000-55d0a1200000 rw-p 01100000 fd:01 1234 /usr/bin/herd",
            "7ffd1a000000-7ffd1a002000 r-xp 00000000 00:00 0 [vdso]",
            "7f0000000000-7f0000100000 rw-p 00000000 00:00 0",
        ] {
            assert_eq!(executable_file_mapping(other), None, "{other}");
        }
    }

    #[test]
    fn released_code_still_runs() {
        assert!(release() > 0, "this test binary has executable mappings");
        // The code below faults back in from the file.
        assert_eq!(executable_file_mapping("0-1000 r-xp 0 0:0 1 /x"), Some((0, 0x1000)));
    }
}
