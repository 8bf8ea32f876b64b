//! A minimal streaming reader of tar archives: ustar, GNU (long names `L`/`K`, base-256 sizes)
//! and pax (`path`, `linkpath`, `size`, `mtime` records), enough for a checked-out tree. It yields
//! entries one by one with their data left in the stream; [`crate::receive`] puts them on disk.

use std::io::{self, Read};

const BLOCK: usize = 512;
/// The largest pax header or GNU long name accepted; real ones are a few hundred bytes.
const MAX_META: u64 = 1024 * 1024;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink { target: Vec<u8> },
    HardLink { target: Vec<u8> },
}

/// One entry of the archive; its `size` bytes of data follow in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as stored (relative, `/`-separated; not yet checked).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// The permission bits (the low 12 bits of the header's mode).
    pub mode: u32,
    /// Bytes of data in the stream (only files have any that matter).
    pub size: u64,
    /// Seconds since the epoch, when the header has a usable one.
    pub mtime: Option<u64>,
    /// Stream offset of the entry's header, for messages.
    pub offset: u64,
}

/// Why the stream was refused, at which byte.
#[derive(Debug)]
pub enum TarError {
    /// The stream is not a valid archive (or ends early).
    Format { offset: u64, message: String },
    /// Reading the stream failed.
    Io(io::Error),
}

/// Pulls entries out of a tar stream.
pub struct Reader<R> {
    inner: R,
    /// Bytes consumed so far.
    offset: u64,
    /// Data (plus padding) of the current entry not consumed yet.
    pending: u64,
    finished: bool,
}

/// Overrides for the next entry, from pax and GNU meta entries before it.
#[derive(Default)]
struct Meta {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            pending: 0,
            finished: false,
        }
    }

    /// The next entry, or `None` after the end-of-archive block. Unread data of the previous
    /// entry is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip(self.pending)?;
        self.pending = 0;
        let mut meta = Meta::default();
        loop {
            let offset = self.offset;
            let Some(header) = self.block()? else {
                return Err(self.format(
                    offset,
                    "the stream ended before the end-of-archive marker (truncated?)".to_owned(),
                ));
            };
            if header.iter().all(|&b| b == 0) {
                self.finished = true;
                return Ok(None);
            }
            verify_checksum(&header).map_err(|m| self.format(offset, m))?;
            let field = |range: std::ops::Range<usize>, what: &str| {
                numeric(&header[range]).ok_or_else(|| format!("its {what} field is not a number"))
            };
            let mut size = field(124..136, "size").map_err(|m| self.format(offset, m))?;
            let mode = field(100..108, "mode").map_err(|m| self.format(offset, m))?;
            let mtime = field(136..148, "mtime").ok();
            let flag = header[156];
            let meta_data = |this: &mut Self, what: &str| -> Result<Vec<u8>, TarError> {
                if size > MAX_META {
                    return Err(this.format(
                        offset,
                        format!("its {what} is {size} bytes long; at most {MAX_META} are accepted"),
                    ));
                }
                this.data(size)
            };
            match flag {
                b'x' => {
                    let records = meta_data(self, "pax header")?;
                    pax(&records, &mut meta).map_err(|m| self.format(offset, m))?;
                    continue;
                }
                b'g' => {
                    // Global pax records (a comment, a default mtime) change nothing here.
                    meta_data(self, "global pax header")?;
                    continue;
                }
                b'L' => {
                    meta.path = Some(trim_nul(meta_data(self, "GNU long name")?));
                    continue;
                }
                b'K' => {
                    meta.link = Some(trim_nul(meta_data(self, "GNU long link name")?));
                    continue;
                }
                _ => {}
            }
            if let Some(s) = meta.size {
                size = s;
            }
            let path = match meta.path.take() {
                Some(p) => p,
                None => header_path(&header),
            };
            let link = meta.link.take().unwrap_or_else(|| cstr(&header[157..257]));
            let shown = String::from_utf8_lossy(&path).into_owned();
            let kind = match flag {
                b'0' | 0 | b'7' if path.ends_with(b"/") => Kind::Dir,
                b'0' | 0 | b'7' => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink { target: link },
                b'1' => Kind::HardLink { target: link },
                b'3' | b'4' | b'6' => {
                    let what = match flag {
                        b'3' => "a character device",
                        b'4' => "a block device",
                        _ => "a FIFO",
                    };
                    return Err(self.format(
                        offset,
                        format!(
                            "entry `{shown}` is {what}; only files, directories and links are \
                             extracted"
                        ),
                    ));
                }
                other => {
                    return Err(self.format(
                        offset,
                        format!(
                            "entry `{shown}` has the unsupported type `{}`",
                            char::from(other).escape_default()
                        ),
                    ));
                }
            };
            self.pending = padded(size);
            return Ok(Some(Entry {
                path,
                kind,
                mode: (mode & 0o7777) as u32,
                size,
                mtime: meta.mtime.or(mtime),
                offset,
            }));
        }
    }

    /// Copies the current entry's data into `out`; the rest of its block is skipped later.
    pub fn copy_data(&mut self, size: u64, out: &mut impl io::Write) -> Result<(), TarError> {
        let start = self.offset;
        let copied = io::copy(&mut (&mut self.inner).take(size), out).map_err(TarError::Io)?;
        self.offset += copied;
        self.pending = self.pending.saturating_sub(copied);
        if copied < size {
            return Err(self.format(
                start,
                format!("the stream ended inside an entry's data ({copied} of {size} bytes)"),
            ));
        }
        Ok(())
    }

    /// Reads what follows the end of the archive, so that the sender's last writes (padding to a
    /// full record) never meet a closed pipe.
    pub fn drain(&mut self) -> Result<(), TarError> {
        io::copy(&mut self.inner, &mut io::sink()).map_err(TarError::Io)?;
        Ok(())
    }

    fn format(&self, offset: u64, message: String) -> TarError {
        TarError::Format { offset, message }
    }

    /// One block, or `None` at a clean end of stream; a partial block is an error.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut buf = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        let start = self.offset;
        self.offset += filled as u64;
        match filled {
            0 => Ok(None),
            BLOCK => Ok(Some(buf)),
            n => Err(self.format(
                start,
                format!("the stream ended inside a header ({n} of {BLOCK} bytes)"),
            )),
        }
    }

    /// The `size` bytes of a meta entry, then its padding.
    fn data(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let mut out = Vec::new();
        self.pending = padded(size);
        self.copy_data(size, &mut out)?;
        self.skip(self.pending)?;
        self.pending = 0;
        Ok(out)
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let start = self.offset;
        let skipped =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(TarError::Io)?;
        self.offset += skipped;
        if skipped < n {
            return Err(self.format(start, "the stream ended inside an entry's data".to_owned()));
        }
        Ok(())
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// The header's checksum field against the sum of its bytes (the field itself counted as
/// spaces); old writers summed signed bytes, so that sum is accepted too.
fn verify_checksum(header: &[u8; BLOCK]) -> Result<(), String> {
    let Some(stored) = numeric(&header[148..156]) else {
        return Err(
            "its checksum field is not a number: the stream is corrupt or not a tar archive"
                .to_owned(),
        );
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!(
            "header checksum mismatch (the header says {stored}, its bytes sum to {unsigned}): \
             the stream is corrupt or not a tar archive"
        ))
    }
}

/// A numeric field: octal digits between optional spaces and NULs, or GNU's base-256 form (the
/// high bit of the first byte set) for values that do not fit.
fn numeric(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first()
        && first & 0x80 != 0
    {
        // 0xff starts a negative number, which no field here may hold.
        if first == 0xff {
            return None;
        }
        let mut value = u64::from(first & 0x7f);
        for &b in rest {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end]);
    let digits = text.trim_ascii();
    if digits.is_empty() {
        // An empty field is zero for writers that leave unused ones blank.
        return Some(0);
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// The path of a ustar header: `prefix/name` in the POSIX format, `name` otherwise (the GNU
/// format uses the prefix's bytes for other things).
fn header_path(header: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&header[0..100]);
    let posix = &header[257..263] == b"ustar\0";
    let prefix = if posix {
        cstr(&header[345..500])
    } else {
        Vec::new()
    };
    if prefix.is_empty() {
        name
    } else {
        let mut path = prefix;
        path.push(b'/');
        path.extend_from_slice(&name);
        path
    }
}

/// A NUL-terminated (or full-length) field.
fn cstr(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Parses pax records (`<length> <key>=<value>\n`, the length counting the whole record) into
/// `meta`; keys this reader has no use for (uid, atime, SCHILY.*, …) are ignored.
fn pax(mut records: &[u8], meta: &mut Meta) -> Result<(), String> {
    while !records.is_empty() {
        let bad = || "its pax header has a malformed record".to_owned();
        let space = records.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&records[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > records.len() || records[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &records[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => meta.path = Some(value.to_vec()),
            b"linkpath" => meta.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| "its pax `size` is not a whole number".to_owned())?;
                meta.size = Some(size);
            }
            b"mtime" => {
                // `1700000000.25`: whole seconds are enough; a negative or odd one is dropped.
                let whole = value.split(|&b| b == b'.').next().unwrap_or_default();
                meta.mtime = std::str::from_utf8(whole).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        records = &records[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `archive` whole and describes it, one entry per line (`path kind mode size`), or
    /// the error's text.
    #[track_caller]
    fn check(archive: &[u8], expected: &str) {
        let mut reader = Reader::new(archive);
        let mut lines = Vec::new();
        let outcome = loop {
            match reader.next_entry() {
                Ok(None) => break String::new(),
                Ok(Some(e)) => {
                    let mut data = Vec::new();
                    if let Err(err) = reader.copy_data(e.size, &mut data) {
                        break describe(err);
                    }
                    let kind = match &e.kind {
                        Kind::File => format!("file {:?}", String::from_utf8_lossy(&data)),
                        Kind::Dir => "dir".to_owned(),
                        Kind::Symlink { target } => {
                            format!("symlink -> {}", String::from_utf8_lossy(target))
                        }
                        Kind::HardLink { target } => {
                            format!("hardlink -> {}", String::from_utf8_lossy(target))
                        }
                    };
                    lines.push(format!(
                        "{} {kind} {:o}",
                        String::from_utf8_lossy(&e.path),
                        e.mode
                    ));
                }
                Err(err) => break describe(err),
            }
        };
        if !outcome.is_empty() {
            lines.push(outcome);
        }
        assert_eq!(lines.join("\n"), expected);
    }

    fn describe(err: TarError) -> String {
        match err {
            TarError::Format { offset, message } => format!("error at {offset}: {message}"),
            TarError::Io(e) => format!("io error: {e}"),
        }
    }

    /// A header block by hand: name, type flag, mode, size, and the POSIX magic or not.
    fn header(name: &[u8], flag: u8, size: u64, posix: bool) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = flag;
        if posix {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        } else {
            h[257..265].copy_from_slice(b"ustar  \0");
        }
        seal(&mut h);
        h
    }

    fn seal(h: &mut [u8; BLOCK]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn entry(out: &mut Vec<u8>, h: [u8; BLOCK], data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(
            out.len() + (padded(data.len() as u64) as usize - data.len()),
            0,
        );
    }

    fn end(out: &mut Vec<u8>) {
        out.resize(out.len() + 2 * BLOCK, 0);
    }

    #[test]
    fn ustar_entries_and_the_posix_prefix() {
        let mut a = Vec::new();
        entry(&mut a, header(b"dir/", b'5', 0, true), b"");
        entry(&mut a, header(b"dir/a.txt", b'0', 5, true), b"hello");
        let mut h = header(b"b.txt", b'0', 2, true);
        h[345..352].copy_from_slice(b"dir/sub");
        seal(&mut h);
        entry(&mut a, h, b"hi");
        let mut h = header(b"link", b'2', 0, false);
        h[157..166].copy_from_slice(b"dir/a.txt");
        seal(&mut h);
        entry(&mut a, h, b"");
        // GNU headers use the prefix area for other fields: it is not part of the name.
        let mut h = header(b"gnu.txt", b'0', 1, false);
        h[345..350].copy_from_slice(b"junk!");
        seal(&mut h);
        entry(&mut a, h, b"g");
        // Old archives mark directories with a trailing slash only.
        entry(&mut a, header(b"old/", 0, 0, false), b"");
        end(&mut a);
        check(
            &a,
            "dir/ dir 644\n\
             dir/a.txt file \"hello\" 644\n\
             dir/sub/b.txt file \"hi\" 644\n\
             link symlink -> dir/a.txt 644\n\
             gnu.txt file \"g\" 644\n\
             old/ dir 644",
        );
    }

    #[test]
    fn gnu_long_names_and_pax_records() {
        let long = "d/".repeat(80) + "file.txt";
        let mut a = Vec::new();
        let mut name = long.clone().into_bytes();
        name.push(0);
        entry(
            &mut a,
            header(b"././@LongLink", b'L', name.len() as u64, false),
            &name,
        );
        entry(&mut a, header(b"d/d/d/trunc", b'0', 1, false), b"x");
        let target = "t/".repeat(70);
        entry(
            &mut a,
            header(b"././@LongLink", b'K', target.len() as u64, false),
            target.as_bytes(),
        );
        entry(&mut a, header(b"sym", b'2', 0, false), b"");
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            // The length counts its own digits.
            let mut len = body.len();
            while len.to_string().len() + body.len() != len {
                len = len.to_string().len() + body.len();
            }
            format!("{len}{body}")
        };
        let records = record("path", &long.replace("file", "pax")) + &record("mtime", "17.5");
        entry(
            &mut a,
            header(b"PaxHeaders/x", b'x', records.len() as u64, true),
            records.as_bytes(),
        );
        entry(&mut a, header(b"short", b'0', 2, true), b"px");
        let g = record("comment", "hello");
        entry(
            &mut a,
            header(b"global", b'g', g.len() as u64, true),
            g.as_bytes(),
        );
        entry(&mut a, header(b"after", b'0', 0, true), b"");
        end(&mut a);
        check(
            &a,
            &format!(
                "{long} file \"x\" 644\nsym symlink -> {target} 644\n{} file \"px\" 644\n\
                 after file \"\" 644",
                long.replace("file", "pax")
            ),
        );
    }

    #[test]
    fn corrupt_or_truncated_streams_are_errors() {
        let mut a = Vec::new();
        entry(&mut a, header(b"a", b'0', 3, true), b"abc");
        end(&mut a);
        let mut bad = a.clone();
        bad[10] ^= 0x20;
        let sum: u64 = a[..BLOCK].iter().map(|&b| u64::from(b)).sum::<u64>()
            - a[148..156].iter().map(|&b| u64::from(b)).sum::<u64>()
            + 8 * u64::from(b' ');
        check(
            &bad,
            &format!(
                "error at 0: header checksum mismatch (the header says {sum}, its bytes sum to \
                 {}): the stream is corrupt or not a tar archive",
                sum + 0x20
            ),
        );
        check(
            &a[..BLOCK + 2],
            "error at 512: the stream ended inside an entry's data (2 of 3 bytes)",
        );
        check(
            &a[..2 * BLOCK],
            "a file \"abc\" 644\nerror at 1024: the stream ended before the end-of-archive \
             marker (truncated?)",
        );
        check(
            &a[..100],
            "error at 0: the stream ended inside a header (100 of 512 bytes)",
        );
        check(
            b"",
            "error at 0: the stream ended before the end-of-archive marker (truncated?)",
        );
        check(
            &[b'x'; BLOCK],
            "error at 0: its checksum field is not a number: the stream is corrupt or not a tar \
             archive",
        );
        let mut dev = Vec::new();
        entry(&mut dev, header(b"tty", b'3', 0, true), b"");
        check(
            &dev,
            "error at 0: entry `tty` is a character device; only files, directories and links \
             are extracted",
        );
        let mut sparse = Vec::new();
        entry(&mut sparse, header(b"s", b'S', 0, false), b"");
        check(
            &sparse,
            "error at 0: entry `s` has the unsupported type `S`",
        );
        let mut pax_bad = Vec::new();
        entry(&mut pax_bad, header(b"p", b'x', 9, true), b"99 path=x");
        check(
            &pax_bad,
            "error at 0: its pax header has a malformed record",
        );
        let mut huge = Vec::new();
        entry(&mut huge, header(b"L", b'L', MAX_META + 1, false), b"");
        check(
            &huge,
            "error at 0: its GNU long name is 1048577 bytes long; at most 1048576 are accepted",
        );
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0"), Some(0o644));
        assert_eq!(numeric(b"  644 \0"), Some(0o644));
        assert_eq!(numeric(b"\0\0\0"), Some(0));
        assert_eq!(numeric(b"0009"), None);
        assert_eq!(
            numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(numeric(&[0xff, 0xff]), None);
        assert_eq!(
            numeric(&[0x81, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "overflows u64"
        );
    }
}
