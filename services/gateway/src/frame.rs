//! The gRPC message frame of a unary call's body: a compression flag, the message's length
//! (4 bytes, big-endian), the message. Both of the gateway's byte paths use it: the client
//! that calls replicas ([`crate::unary`]) and the server side that answers `ModelInfer`
//! ([`crate::grpc::passthrough`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the prefix: the compression flag and the length.
pub(crate) const PREFIX: usize = 5;

/// Why a body is not one uncompressed message; each side words it for its own reader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The body is shorter than a prefix (this many bytes; 0: no message at all).
    Short(usize),
    /// The message is marked compressed.
    Compressed,
    /// The prefix announces one length and the body carries another.
    Length {
        /// The length in the prefix.
        announced: usize,
        /// The bytes after the prefix.
        carried: usize,
    },
}

/// `message` with its prefix (uncompressed).
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.extend_from_slice(message);
    framed.freeze()
}

/// The one uncompressed message of a unary call's body, without its prefix.
pub(crate) fn unframe(mut body: Bytes) -> Result<Bytes, FrameError> {
    if body.len() < PREFIX {
        return Err(FrameError::Short(body.len()));
    }
    let compressed = body.get_u8();
    let announced = body.get_u32() as usize;
    if compressed != 0 {
        return Err(FrameError::Compressed);
    }
    if announced != body.len() {
        return Err(FrameError::Length {
            announced,
            carried: body.len(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_message_comes_out_unchanged() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], b"\0\0\0\0\x03abc");
        assert_eq!(unframe(framed).unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(unframe(frame(b"")).unwrap(), Bytes::new());
    }

    #[test]
    fn each_malformed_body_says_what_is_wrong() {
        assert_eq!(unframe(Bytes::new()), Err(FrameError::Short(0)));
        assert_eq!(
            unframe(Bytes::from_static(b"\0\0")),
            Err(FrameError::Short(2))
        );
        assert_eq!(
            unframe(Bytes::from_static(b"\x01\0\0\0\x01a")),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            unframe(Bytes::from_static(b"\0\0\0\0\x05ab")),
            Err(FrameError::Length {
                announced: 5,
                carried: 2
            })
        );
    }
}
