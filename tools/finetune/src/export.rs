//! Export: the next version of the classification model is its parent's ONNX file with the
//! head's two initializers (`classifier.weight`, `classifier.bias`) rewritten in place. The
//! protobuf is walked, not decoded and re-encoded: every other byte (the encoder, the graph,
//! the metadata) stays identical to the parent's, and the shapes cannot change, since the new
//! values take exactly the bytes of the old ones.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::train::{CLASSES, DIM, Head};

/// Why a model file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file is not the ONNX protobuf this expects.
    #[error("{0}")]
    Format(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

fn format(why: impl Into<String>) -> ExportError {
    ExportError::Format(why.into())
}

/// One protobuf field: its number and, for length-delimited fields, where its payload is.
struct Field {
    number: u64,
    payload: Option<Range<usize>>,
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, ExportError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or_else(|| format("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(format("varint longer than 10 bytes"))
}

/// The fields of the message in `buf[range]`.
fn fields(buf: &[u8], range: Range<usize>) -> Result<Vec<Field>, ExportError> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let key = varint(buf, &mut at)?;
        let number = key >> 3;
        let payload = match key & 7 {
            0 => {
                varint(buf, &mut at)?;
                None
            }
            1 => {
                at += 8;
                None
            }
            5 => {
                at += 4;
                None
            }
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let start = at;
                at = at
                    .checked_add(len)
                    .filter(|end| *end <= range.end)
                    .ok_or_else(|| format("a field runs past its message"))?;
                Some(start..at)
            }
            other => return Err(format(format!("unsupported wire type {other}"))),
        };
        out.push(Field { number, payload });
    }
    if at != range.end {
        return Err(format("a field runs past its message"));
    }
    Ok(out)
}

/// Where the raw little-endian data of each named float initializer of the graph is.
fn initializers(model: &[u8]) -> Result<Vec<(String, Range<usize>)>, ExportError> {
    // ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto.data_type = 2,
    // name = 8, raw_data = 9.
    let graph = fields(model, 0..model.len())?
        .into_iter()
        .find(|f| f.number == 7)
        .and_then(|f| f.payload)
        .ok_or_else(|| format("no graph in the model"))?;
    let mut out = Vec::new();
    for field in fields(model, graph)? {
        let (5, Some(tensor)) = (field.number, field.payload) else {
            continue;
        };
        let mut name = None;
        let mut raw = None;
        for f in fields(model, tensor)? {
            match (f.number, f.payload) {
                (8, Some(p)) => name = Some(String::from_utf8_lossy(&model[p]).into_owned()),
                (9, Some(p)) => raw = Some(p),
                _ => {}
            }
        }
        if let (Some(name), Some(raw)) = (name, raw) {
            out.push((name, raw));
        }
    }
    Ok(out)
}

fn head_ranges(model: &[u8]) -> Result<(Range<usize>, Range<usize>), ExportError> {
    let found = initializers(model)?;
    let find = |name: &str, floats: usize| {
        let range = found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| format(format!("the model has no raw initializer {name:?}")))?;
        if range.len() != floats * 4 {
            return Err(format(format!(
                "{name} holds {} bytes; a {DIM}×{CLASSES} head needs {}",
                range.len(),
                floats * 4
            )));
        }
        Ok(range)
    };
    Ok((
        find("classifier.weight", DIM * CLASSES)?,
        find("classifier.bias", CLASSES)?,
    ))
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The head stored in a classification model's ONNX bytes.
pub fn read_head(model: &[u8]) -> Result<Head, ExportError> {
    let (w, b) = head_ranges(model)?;
    let bias = floats(&model[b]);
    Ok(Head {
        w: floats(&model[w]),
        b: [bias[0], bias[1]],
    })
}

/// The model's bytes with `head` in place of its head.
pub fn write_head(model: &[u8], head: &Head) -> Result<Vec<u8>, ExportError> {
    let (w, b) = head_ranges(model)?;
    let mut out = model.to_vec();
    for (i, v) in head.w.iter().enumerate() {
        out[w.start + 4 * i..w.start + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in head.b.iter().enumerate() {
        out[b.start + 4 * i..b.start + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The numbered version folders of a model, in order.
pub fn versions(model_dir: &Path) -> Result<Vec<i64>, ExportError> {
    let io = |source| ExportError::Io {
        path: model_dir.to_owned(),
        source,
    };
    let mut out: Vec<i64> = std::fs::read_dir(model_dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").exists())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|v| *v > 0)
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Whether the version in `version_dir` is the int8 form of another (its `card.json`, as
/// scripts/quantize_model.py writes it, says `"precision": "int8"`).
pub fn is_int8(version_dir: &Path) -> bool {
    std::fs::read(version_dir.join("card.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|card| card["precision"] == "int8")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader never
/// sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(number: u64, wire: u64) -> Vec<u8> {
        encode_varint((number << 3) | wire)
    }

    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = key(number, 2);
        out.extend(encode_varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn tensor(name: &str, values: &[f32]) -> Vec<u8> {
        let mut t = key(2, 0);
        t.push(1); // FLOAT
        t.extend(bytes_field(8, name.as_bytes()));
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.extend(bytes_field(9, &raw));
        t
    }

    /// A model with a graph holding another initializer and the head.
    fn model(w: &[f32], b: &[f32]) -> Vec<u8> {
        let mut graph = bytes_field(1, b"node bytes stay as they are");
        graph.extend(bytes_field(5, &tensor("encoder.weight", &[1.0, 2.0])));
        graph.extend(bytes_field(5, &tensor("classifier.weight", w)));
        graph.extend(bytes_field(5, &tensor("classifier.bias", b)));
        let mut m = key(1, 0);
        m.push(8); // ir_version
        m.extend(bytes_field(7, &graph));
        m
    }

    #[test]
    fn the_head_is_rewritten_and_nothing_else() {
        let w: Vec<f32> = (0..DIM * CLASSES).map(|i| i as f32 * 0.01).collect();
        let original = model(&w, &[0.5, -0.5]);
        let head = read_head(&original).unwrap();
        assert_eq!(head.w, w);
        assert_eq!(head.b, [0.5, -0.5]);
        let new = Head {
            w: vec![0.25; DIM * CLASSES],
            b: [1.0, 2.0],
        };
        let written = write_head(&original, &new).unwrap();
        assert_eq!(written.len(), original.len());
        assert_eq!(read_head(&written).unwrap(), new);
        assert_eq!(written, model(&new.w, &new.b));
    }

    #[test]
    fn a_model_without_the_head_is_refused() {
        let mut graph = bytes_field(5, &tensor("encoder.weight", &[1.0]));
        graph.extend(bytes_field(5, &tensor("classifier.bias", &[0.0, 0.0])));
        let m = bytes_field(7, &graph);
        let err = read_head(&m).unwrap_err().to_string();
        assert!(err.contains("classifier.weight"), "{err}");
        let small = model(&[0.0; 4], &[0.0, 0.0]);
        let err = read_head(&small).unwrap_err().to_string();
        assert!(err.contains("holds 16 bytes"), "{err}");
        assert!(read_head(b"\x3a\xff").is_err(), "truncated");
    }
}
