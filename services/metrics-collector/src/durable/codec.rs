//! The byte layout of the collector's files: little-endian fixed-width numbers, LEB128 lengths
//! and counts, and length-prefixed UTF-8 strings. A [`Reader`] never panics on bad bytes: it
//! says where they stop making sense, so that a torn or corrupt file is cut, not trusted.

/// Appends encoded values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The bytes written so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }

    /// A count or length, LEB128.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }

    /// A `usize` count, LEB128.
    pub fn len(&mut self, v: usize) {
        self.varint(v as u64);
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Eight bytes, little-endian, two's complement.
    pub fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// An IEEE 754 double, little-endian.
    pub fn f64(&mut self, v: f64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    /// Many doubles, count first.
    pub fn f64s(&mut self, values: &[f64]) {
        self.len(values.len());
        self.bytes.reserve(values.len() * 8);
        for v in values {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A string, length first.
    pub fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes.extend_from_slice(s.as_bytes());
    }
}

/// Where and why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte {at}: {what}")]
pub struct Malformed {
    /// Offset of the first byte that could not be read.
    pub at: usize,
    /// What was expected there.
    pub what: &'static str,
}

/// Reads what a [`Writer`] wrote.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from their start.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Reads `bytes` from byte `at`.
    pub fn at(bytes: &'a [u8], at: usize) -> Reader<'a> {
        Reader { bytes, at }
    }

    /// The next byte to read.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, Malformed> {
        Err(Malformed { at: self.at, what })
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() - self.at < n {
            return self.fail(what);
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1, "a byte")?[0])
    }

    /// A LEB128 number.
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        self.fail("a number of at most 10 bytes")
    }

    /// A count of items each at least `item_bytes` long, checked against the bytes left so that
    /// a corrupt count cannot ask for more memory than the file holds.
    pub fn len(&mut self, item_bytes: usize) -> Result<usize, Malformed> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(item_bytes.max(1) as u64) > left {
            return self.fail("a count within the bytes left");
        }
        Ok(n as usize)
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8, "eight bytes")?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    /// Eight bytes, little-endian, two's complement.
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(self.u64()? as i64)
    }

    /// An IEEE 754 double.
    pub fn f64(&mut self) -> Result<f64, Malformed> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// Many doubles, count first.
    pub fn f64s(&mut self) -> Result<Vec<f64>, Malformed> {
        let n = self.len(8)?;
        let b = self.take(n * 8, "doubles")?;
        Ok(b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("eight bytes")))
            .collect())
    }

    /// A string.
    pub fn str(&mut self) -> Result<String, Malformed> {
        let n = self.len(1)?;
        let b = self.take(n, "string bytes")?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.fail("UTF-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_short_input_is_an_error() {
        let mut w = Writer::new();
        w.u8(7);
        w.varint(300);
        w.varint(u64::MAX);
        w.i64(-5);
        w.f64(1.5);
        w.f64s(&[1.0, -2.0]);
        w.str("größe");
        let mut r = Reader::new(&w.bytes);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.varint(), Ok(300));
        assert_eq!(r.varint(), Ok(u64::MAX));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.f64(), Ok(1.5));
        assert_eq!(r.f64s(), Ok(vec![1.0, -2.0]));
        assert_eq!(r.str().as_deref(), Ok("größe"));
        assert!(r.is_empty());
        assert!(r.u8().is_err());
        // A count larger than the bytes left is refused before anything is allocated.
        let mut w = Writer::new();
        w.varint(1 << 40);
        assert!(Reader::new(&w.bytes).f64s().is_err());
    }
}
