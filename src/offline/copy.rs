//! Decoding of PostgreSQL's binary `COPY … TO STDOUT (FORMAT binary)` stream into
//! batches. Binary COPY is the fastest way rows leave PostgreSQL (no per-row protocol
//! messages, no text parsing), and every field lands in
//! [`ColumnBuilder::push_pg_binary`](crate::batch::ColumnBuilder::push_pg_binary), the
//! same decoder the online path uses.

use bytes::{Buf, BytesMut};

use crate::batch::{BatchBuilder, DecodeError};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Incremental decoder: feed it the chunks as they arrive (tuples may span chunks).
#[derive(Debug, Default)]
pub struct BinaryCopyDecoder {
    buf: BytesMut,
    header_done: bool,
    finished: bool,
    /// (start, length) of each field of the tuple being decoded; reused.
    extents: Vec<(usize, i32)>,
}

impl BinaryCopyDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Whether the trailer was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Decodes the next complete tuple into `out`. Returns `Ok(false)` when more bytes
    /// are needed (or the stream is finished).
    pub fn next_tuple(&mut self, out: &mut BatchBuilder) -> Result<bool, DecodeError> {
        let Some(end) = self.frame(out.specs().len())? else {
            return Ok(false);
        };
        let fields = self.fields();
        for i in 0..self.extents.len() {
            out.column_mut(i).push_pg_binary(fields.get(i))?;
        }
        self.buf.advance(end);
        Ok(true)
    }

    /// Hands the next complete tuple's fields, as they are, to `f`, for a caller that
    /// passes them on rather than decoding them. `Ok(None)` when more bytes are needed
    /// (or the stream is finished).
    pub fn next_fields<R>(
        &mut self,
        fields: usize,
        f: impl FnOnce(Fields<'_>) -> R,
    ) -> Result<Option<R>, DecodeError> {
        let Some(end) = self.frame(fields)? else {
            return Ok(None);
        };
        let result = f(self.fields());
        self.buf.advance(end);
        Ok(Some(result))
    }

    /// The fields [`Self::frame`] found last.
    fn fields(&self) -> Fields<'_> {
        Fields {
            buf: &self.buf,
            extents: &self.extents,
        }
    }

    /// Finds the next whole tuple (after the header, if not yet read): fills `extents`
    /// with its fields and returns where it ends, without consuming anything; `None`
    /// when more bytes are needed or the trailer was reached.
    fn frame(&mut self, expected: usize) -> Result<Option<usize>, DecodeError> {
        let malformed = |message: String| DecodeError {
            column: "<copy stream>".into(),
            message,
        };
        if self.finished {
            return Ok(None);
        }
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(malformed("not a binary COPY stream".into()));
            }
            let ext = u32::from_be_bytes(
                self.buf[SIGNATURE.len() + 4..SIGNATURE.len() + 8]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize;
            if self.buf.len() < SIGNATURE.len() + 8 + ext {
                return Ok(None);
            }
            self.buf.advance(SIGNATURE.len() + 8 + ext);
            self.header_done = true;
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if fields == -1 {
            self.finished = true;
            self.buf.advance(2);
            return Ok(None);
        }
        let fields = fields as usize;
        if fields != expected {
            return Err(malformed(format!(
                "tuple has {fields} fields, expected {expected}"
            )));
        }
        let mut pos = 2;
        self.extents.clear();
        for _ in 0..fields {
            if self.buf.len() < pos + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(self.buf[pos..pos + 4].try_into().expect("4 bytes"));
            pos += 4;
            let start = pos;
            if len > 0 {
                pos += len as usize;
                if self.buf.len() < pos {
                    return Ok(None);
                }
            }
            self.extents.push((start, len));
        }
        Ok(Some(pos))
    }
}

/// One tuple's fields, raw (see [`BinaryCopyDecoder::next_fields`]).
pub struct Fields<'a> {
    buf: &'a [u8],
    extents: &'a [(usize, i32)],
}

impl<'a> Fields<'a> {
    /// Field `i`'s bytes; `None` for NULL.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let (start, len) = self.extents[i];
        (len >= 0).then(|| &self.buf[start..start + len as usize])
    }
}

/// The binary COPY header: signature, flags, no extension.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary COPY trailer.
pub const TRAILER: &[u8] = &[0xff, 0xff];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ColumnSpec;
    use crate::definitions::ValueType;

    fn stream(rows: &[(Option<i64>, Option<&str>)]) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        for (a, b) in rows {
            out.extend_from_slice(&2i16.to_be_bytes());
            match a {
                Some(v) => {
                    out.extend_from_slice(&8i32.to_be_bytes());
                    out.extend_from_slice(&v.to_be_bytes());
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
            match b {
                Some(s) => {
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend_from_slice(TRAILER);
        out
    }

    #[test]
    fn decodes_tuples_split_across_chunks() {
        let bytes = stream(&[(Some(1), Some("a")), (None, Some("")), (Some(-3), None)]);
        let specs = vec![
            ColumnSpec {
                name: "n".into(),
                dtype: ValueType::Int64,
            },
            ColumnSpec {
                name: "s".into(),
                dtype: ValueType::String,
            },
        ];
        // Feed one byte at a time: the worst split there is.
        let mut builder = BatchBuilder::new(specs, 8);
        let mut decoder = BinaryCopyDecoder::new();
        for b in &bytes {
            decoder.feed(std::slice::from_ref(b));
            while decoder.next_tuple(&mut builder).unwrap() {}
        }
        assert!(decoder.is_finished());
        let batch = builder.take();
        assert_eq!(batch.rows, 3);
        assert!(batch.columns[0].is_null(1));
        assert!(!batch.columns[1].is_null(1), "empty string is not NULL");
        assert!(batch.columns[1].is_null(2));
    }
}
