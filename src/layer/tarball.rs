//! The tar format, read: ustar, GNU and PAX headers merged into one header
//! per entry, every numeric field checked.
//!
//! Written here rather than taken from the `tar` crate because a layer's
//! meaning depends on details that crate hides or gets wrong for us: PAX
//! records are split by their length prefix (so values may hold newlines),
//! malformed records and numbers are errors instead of silently dropped,
//! global headers are records, not entries, and what follows the end of the
//! archive is checked the way Go's reader (and so umoci) checks it.

use std::io::{self, Read};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};

use super::{show, Time};

const BLOCK: usize = 512;

/// PAX records that apply to an entry: from global headers, then its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// `path`.
    pub path: Option<Vec<u8>>,
    /// `linkpath`.
    pub linkpath: Option<Vec<u8>>,
    /// `size`.
    pub size: Option<u64>,
    /// `mtime`, with its fraction.
    pub mtime: Option<Time>,
    /// `uid`.
    pub uid: Option<u64>,
    /// `gid`.
    pub gid: Option<u64>,
    /// `SCHILY.xattr.NAME`, in the order given (a later one replaces).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Records {
    /// Parses the data of a PAX header: `LEN KEY=VALUE\n` records, where LEN
    /// counts the whole record, so a value may hold any byte.
    pub fn parse(mut data: &[u8]) -> Result<Records> {
        let mut out = Records::default();
        while !data.is_empty() {
            let bad = || {
                eyre!(
                    "a PAX record cannot be parsed: {:?}",
                    String::from_utf8_lossy(&data[..data.len().min(40)])
                )
            };
            let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
                .ok_or_else(bad)?;
            if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err(bad());
            }
            let record = &data[space + 1..len - 1];
            let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
            out.set(&record[..eq], &record[eq + 1..])?;
            data = &data[len..];
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.linkpath = Some(value.to_vec()),
            b"size" => self.size = Some(number(key, value)?),
            b"mtime" => self.mtime = Some(pax_time(value)?),
            b"uid" => self.uid = Some(number(key, value)?),
            b"gid" => self.gid = Some(number(key, value)?),
            k if k.starts_with(b"GNU.sparse.") => bail!("sparse files are not supported in layers"),
            k => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    self.xattrs.retain(|(n, _)| n != name);
                    self.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
        Ok(())
    }

    /// `self` with `over`'s records taking precedence.
    pub fn overlaid(&self, over: &Records) -> Records {
        let mut xattrs = self.xattrs.clone();
        for (k, v) in &over.xattrs {
            xattrs.retain(|(n, _)| n != k);
            xattrs.push((k.clone(), v.clone()));
        }
        Records {
            path: over.path.clone().or_else(|| self.path.clone()),
            linkpath: over.linkpath.clone().or_else(|| self.linkpath.clone()),
            size: over.size.or(self.size),
            mtime: over.mtime.or(self.mtime),
            uid: over.uid.or(self.uid),
            gid: over.gid.or(self.gid),
            xattrs,
        }
    }
}

fn number(key: &[u8], value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            eyre!(
                "the PAX record {} is not a number: {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            )
        })
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
pub fn pax_time(value: &[u8]) -> Result<Time> {
    let bad = || eyre!("the PAX mtime {:?} is not a time", String::from_utf8_lossy(value));
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return Err(bad());
    }
    let sec: i64 = whole.parse().map_err(|_| bad())?;
    let nsec: u32 = format!("{:0<9}", &frac[..frac.len().min(9)])
        .parse()
        .map_err(|_| bad())?;
    Ok(match (negative, nsec) {
        (false, _) => Time { sec, nsec },
        (true, 0) => Time { sec: -sec, nsec: 0 },
        (true, n) => Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - n,
        },
    })
}

/// One entry's header, with GNU long names and PAX records applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The type flag byte.
    pub flag: u8,
    /// The name as the archive has it (not cleaned).
    pub name: Vec<u8>,
    /// The link target (symlinks and hard links).
    pub linkname: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Size of the content that follows.
    pub size: u64,
    /// Modification time.
    pub mtime: Time,
    /// Device numbers (character and block devices).
    pub device: (u32, u32),
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads a tar stream entry by entry.
pub struct TarReader<R> {
    inner: R,
    /// Content bytes of the current entry not yet read, then its padding.
    left: u64,
    padding: u64,
    global: Records,
    done: bool,
}

impl<R: Read> TarReader<R> {
    /// Reads the archive `inner`.
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            left: 0,
            padding: 0,
            global: Records::default(),
            done: false,
        }
    }

    /// The next entry's header, or `None` at the end of the archive; its
    /// content is then read from `self` (as [`Read`]).
    pub fn next_entry(&mut self) -> Result<Option<Header>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut local = Records::default();
        let (mut long_name, mut long_link) = (None, None);
        loop {
            let Some(block) = self.block()? else {
                // No end blocks: some writers stop right after the last entry.
                if local != Records::default() || long_name.is_some() || long_link.is_some() {
                    bail!("the archive ends after an extended header, before its entry");
                }
                self.done = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                // A second zero block, or nothing, ends the archive; anything
                // else after a zero block is a broken archive.
                if let Some(next) = self.block()? {
                    if next.iter().any(|&b| b != 0) {
                        bail!("the archive has data after a lone end-of-archive block: it is not a valid tar");
                    }
                }
                return Ok(None);
            }
            let raw = RawHeader::parse(&block).map_err(|e| eyre!("entry {}: {e:#}", show(&cstr(&block[..100]))))?;
            let size = raw.size;
            match raw.flag {
                b'x' => local = local.overlaid(&Records::parse(&self.data(size)?)?),
                b'g' => {
                    let records = Records::parse(&self.data(size)?)?;
                    self.global = self.global.overlaid(&records);
                }
                b'L' => long_name = Some(trim_nul(self.data(size)?)),
                b'K' => long_link = Some(trim_nul(self.data(size)?)),
                _ => {
                    let records = self.global.overlaid(&local);
                    let mut xattrs = records.xattrs;
                    xattrs.sort();
                    let header = Header {
                        flag: raw.flag,
                        name: local.path.or(long_name).unwrap_or(raw.name),
                        linkname: local.linkpath.or(long_link).unwrap_or(raw.linkname),
                        mode: raw.mode,
                        uid: records.uid.unwrap_or(raw.uid),
                        gid: records.gid.unwrap_or(raw.gid),
                        size: local.size.unwrap_or(size),
                        mtime: records.mtime.unwrap_or(Time::secs(raw.mtime)),
                        device: raw.device,
                        xattrs,
                    };
                    self.left = header.size;
                    self.padding = padding(header.size);
                    return Ok(Some(header));
                }
            }
        }
    }

    /// Reads what follows the archive, to the end of the stream.
    pub fn finish(mut self) -> Result<R> {
        self.skip_rest()?;
        io::copy(&mut self.inner, &mut io::sink()).wrap_err("reading the end of the layer")?;
        Ok(self.inner)
    }

    /// Skips what is left of the current entry and its padding; a stream
    /// may end without the last entry's padding.
    fn skip_rest(&mut self) -> Result<()> {
        let left = std::mem::take(&mut self.left);
        let copied = io::copy(&mut (&mut self.inner).take(left), &mut io::sink())?;
        if copied != left {
            bail!("the archive ends inside an entry's content");
        }
        let padding = std::mem::take(&mut self.padding);
        io::copy(&mut (&mut self.inner).take(padding), &mut io::sink())?;
        Ok(())
    }

    /// The next 512-byte block, `None` at the end of the stream.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut n = 0;
        while n < BLOCK {
            match self.inner.read(&mut block[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        match n {
            0 => Ok(None),
            BLOCK => Ok(Some(block)),
            _ => bail!("the archive ends inside a header"),
        }
    }

    /// The content of an extended header (it is held in memory: at most 1 MiB).
    fn data(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > 1 << 20 {
            bail!("an extended header of {size} bytes is larger than any layer needs");
        }
        let mut data = vec![0u8; size as usize];
        self.inner
            .read_exact(&mut data)
            .wrap_err("the archive ends inside an extended header")?;
        io::copy(&mut (&mut self.inner).take(padding(size)), &mut io::sink())?;
        Ok(data)
    }
}

impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if max == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry's content",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// The fields of one 512-byte header block.
struct RawHeader {
    flag: u8,
    name: Vec<u8>,
    linkname: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    device: (u32, u32),
}

impl RawHeader {
    fn parse(b: &[u8; BLOCK]) -> Result<RawHeader> {
        let stored = field_number(&b[148..156]).wrap_err("the header checksum is malformed")?;
        let unsigned: i64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| if (148..156).contains(&i) { 32 } else { i64::from(x) })
            .sum();
        let signed: i64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(x as i8)
                }
            })
            .sum();
        if stored != unsigned && stored != signed {
            bail!("a header's checksum does not match: the archive is corrupt");
        }
        let flag = b[156];
        let mut name = cstr(&b[0..100]);
        let posix = &b[257..263] == b"ustar\0";
        if posix {
            let prefix = cstr(&b[345..500]);
            if !prefix.is_empty() {
                name = [prefix.as_slice(), b"/", name.as_slice()].concat();
            }
        }
        let is_device = matches!(flag, b'3' | b'4');
        let device = if is_device {
            let major = field_number(&b[329..337]).wrap_err("the device major number is malformed")?;
            let minor = field_number(&b[337..345]).wrap_err("the device minor number is malformed")?;
            (small(major)?, small(minor)?)
        } else {
            (0, 0)
        };
        Ok(RawHeader {
            flag,
            name,
            linkname: cstr(&b[157..257]),
            mode: small(field_number(&b[100..108]).wrap_err("the mode is malformed")?)?,
            uid: nonnegative(field_number(&b[108..116]).wrap_err("the owner (uid) is malformed")?)?,
            gid: nonnegative(field_number(&b[116..124]).wrap_err("the group (gid) is malformed")?)?,
            size: nonnegative(field_number(&b[124..136]).wrap_err("the size is malformed")?)?,
            mtime: field_number(&b[136..148]).wrap_err("the mtime is malformed")?,
            device,
        })
    }
}

fn cstr(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn nonnegative(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| eyre!("a header field is negative"))
}

fn small(n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| eyre!("a header field is out of range: {n}"))
}

/// A numeric header field: octal (space or NUL padded), or GNU base-256.
fn field_number(field: &[u8]) -> Result<i64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // Base-256, two's complement; 0xff starts a negative number.
            let negative = first == 0xff;
            let mut n: i64 = if negative { -1 } else { 0 };
            for (i, &b) in field.iter().enumerate() {
                let b = if i == 0 && !negative { b & 0x7f } else { b };
                n = n.checked_mul(256).ok_or_else(|| eyre!("a base-256 number overflows"))? | i64::from(b);
            }
            return Ok(n);
        }
    }
    let text: Vec<u8> = field.iter().copied().filter(|&b| b != 0).collect();
    let text = std::str::from_utf8(&text).map_err(|_| eyre!("{:?} is not a number", String::from_utf8_lossy(field)))?;
    let text = text.trim_matches(' ');
    if text.is_empty() {
        return Ok(0);
    }
    i64::from_str_radix(text, 8).map_err(|_| eyre!("{text:?} is not an octal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_hold_newlines() {
        let r = Records::parse(b"22 SCHILY.xattr.a=x\ny\n11 uid=700\n").unwrap();
        assert_eq!(r.xattrs, vec![(b"a".to_vec(), b"x\ny".to_vec())]);
        assert_eq!(r.uid, Some(700));
        for bad in [&b"5 a=b\n"[..], b"99 a=b\n", b"x a=b\n", b"6 ab\n\n", b"7 a=b\nX"] {
            assert!(Records::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn numbers_are_octal_or_base_256() {
        assert_eq!(field_number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(field_number(b"  755 \0").unwrap(), 0o755);
        assert_eq!(field_number(b"\0\0\0\0\0\0\0\0").unwrap(), 0);
        assert_eq!(field_number(&[0x80, 0, 0, 0, 0, 0x2d, 0xc6, 0xc0]).unwrap(), 3_000_000);
        assert_eq!(field_number(&[0xff; 8]).unwrap(), -1);
        assert!(field_number(b"00x0000\0").is_err());
        assert!(field_number(b"0000009\0").is_err());
    }

    #[test]
    fn pax_times_parse_before_and_after_the_epoch() {
        assert_eq!(
            pax_time(b"1.5").unwrap(),
            Time {
                sec: 1,
                nsec: 500_000_000
            }
        );
        assert_eq!(
            pax_time(b"-1.5").unwrap(),
            Time {
                sec: -2,
                nsec: 500_000_000
            }
        );
        assert_eq!(pax_time(b"-3").unwrap(), Time { sec: -3, nsec: 0 });
        assert_eq!(
            pax_time(b"7.1234567891").unwrap(),
            Time {
                sec: 7,
                nsec: 123_456_789
            }
        );
        for bad in ["", "x", "1.2.3", "1e5", "-"] {
            assert!(pax_time(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
