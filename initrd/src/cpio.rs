//! The newc ("070701") cpio format: a deterministic writer and a small reader.
//!
//! The writer fixes every field that would otherwise leak the build machine's state (mtime,
//! uid/gid, inode numbers), so the same entries always give the same bytes.

use crate::InitrdError;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
pub const S_IFREG: u32 = 0o100000;
/// Directory type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
/// Character device type bits of `st_mode`.
pub const S_IFCHR: u32 = 0o020000;
/// Symbolic link type bits of `st_mode`.
pub const S_IFLNK: u32 = 0o120000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Full `st_mode` (type bits and permissions).
    pub mode: u32,
    /// Device numbers for character devices (major, minor).
    pub rdev: (u32, u32),
    /// File contents (or symlink target).
    pub data: Vec<u8>,
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Writes `entries` in the given order, then the trailer. Inode numbers are 1.. in order.
pub fn write_newc(entries: &[CpioEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let nlink = if e.mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        write_header(&mut out, i as u32 + 1, e, nlink);
    }
    let trailer = CpioEntry {
        name: TRAILER.into(),
        mode: 0,
        rdev: (0, 0),
        data: Vec::new(),
    };
    write_header(&mut out, 0, &trailer, 1);
    out
}

fn write_header(out: &mut Vec<u8>, ino: u32, e: &CpioEntry, nlink: u32) {
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
}

/// Reads every entry of one uncompressed newc archive (up to its trailer).
pub fn read_newc(buf: &[u8]) -> Result<Vec<CpioEntry>, InitrdError> {
    let bad = |what: &str| InitrdError::BadArchive(what.to_string());
    let mut pos = 0usize;
    let mut entries = Vec::new();
    loop {
        let header = buf
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| bad("truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(bad("bad newc magic"));
        }
        let field = |i: usize| -> Result<u32, InitrdError> {
            let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| bad("non-ASCII header field"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("non-hex header field"))
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_start = pos + HEADER_LEN;
        let name_bytes = buf
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad("truncated name"))?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .map_err(|_| bad("non-UTF-8 name"))?
            .to_string();
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = buf
            .get(data_start..data_start + size)
            .ok_or_else(|| bad("truncated data"))?
            .to_vec();
        pos = (data_start + size).next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(CpioEntry {
            name,
            mode,
            rdev,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let entries = vec![
            CpioEntry {
                name: "dir".into(),
                mode: S_IFDIR | 0o755,
                rdev: (0, 0),
                data: vec![],
            },
            CpioEntry {
                name: "dir/file".into(),
                mode: S_IFREG | 0o644,
                rdev: (0, 0),
                data: b"hello".to_vec(),
            },
        ];
        let bytes = write_newc(&entries);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(read_newc(&bytes).unwrap(), entries);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_newc(b"not an archive at all").is_err());
        let bytes = write_newc(&[]);
        assert!(read_newc(&bytes[..50]).is_err());
    }
}
