//! WebSocket frames (RFC 6455): encoding the server's, decoding the client's.
//!
//! The gateway writes frames itself rather than through tungstenite: a
//! delivery is then one header plus a copy of bytes that were serialized
//! once for every subscriber, appended to the connection's batch and written
//! in one syscall. Clients send only small control messages, so the decoder
//! is small too; it enforces the frame limit from the header, before any
//! payload is buffered.

use bytes::{Buf, Bytes, BytesMut};

pub(crate) const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Control frames carry at most this much (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Appends one unmasked, final server frame.
pub(crate) fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if let Ok(short) = u16::try_from(n) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame; the reason is cut (at a character boundary) to fit.
pub(crate) fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(out, CLOSE, &payload);
}

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary,
    /// To be answered with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    Close,
}

/// Why the client's bytes cannot be read further; each maps to a close code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("message larger than the limit")]
    TooBig,
    #[error("text message is not UTF-8")]
    BadUtf8,
    #[error("{0}")]
    Protocol(&'static str),
}

/// Reassembles the client's messages from the bytes read so far.
pub(crate) struct Decoder {
    max_message: usize,
    /// A fragmented message in progress: its opcode and the bytes so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Takes the next whole message out of `buf`; `Ok(None)` when more bytes
    /// are needed. Consumed frames are removed from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else {
                return Ok(None);
            };
            if let Some(message) = self.on_frame(frame)? {
                return Ok(Some(message));
            }
        }
    }

    fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let [b0, b1, ..] = buf[..] else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        let (len, len_bytes) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    (u64::from_be_bytes(be), 8)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        if opcode >= CLOSE {
            if !fin || len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::Protocol(
                    "control frames must be short and final",
                ));
            }
        } else if len > self.max_message as u64 {
            // Refused from the header alone: the payload is never buffered.
            return Err(FrameError::TooBig);
        }
        let len = len as usize;
        let header = 2 + len_bytes + 4;
        if buf.len() < header + len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header - 4..header]);
        buf.advance(header);
        let mut payload = buf.split_to(len);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<Incoming>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        match opcode {
            CLOSE => check_close(&payload).map(|()| Some(Incoming::Close)),
            PING => Ok(Some(Incoming::Ping(payload.freeze()))),
            PONG => Ok(Some(Incoming::Pong)),
            TEXT | BINARY => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol(
                        "a new message inside a fragmented one",
                    ));
                }
                if fin {
                    return complete(opcode, payload.to_vec()).map(Some);
                }
                self.partial = Some((opcode, payload.to_vec()));
                Ok(None)
            }
            CONTINUATION => {
                let Some((first, mut data)) = self.partial.take() else {
                    return Err(FrameError::Protocol(
                        "a continuation with no message to continue",
                    ));
                };
                if data.len() + payload.len() > self.max_message {
                    return Err(FrameError::TooBig);
                }
                data.extend_from_slice(&payload);
                if fin {
                    return complete(first, data).map(Some);
                }
                self.partial = Some((first, data));
                Ok(None)
            }
            _ => Err(FrameError::Protocol("unknown opcode")),
        }
    }
}

/// A client's close frame must carry nothing, or a code a peer may send
/// (RFC 6455 7.4) and a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), FrameError> {
    let (code, reason) = match payload {
        [] => return Ok(()),
        [_] => {
            return Err(FrameError::Protocol(
                "a close frame with a one-byte payload",
            ))
        }
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    // 1004-1006 and 1015 are reserved (never on the wire); 1016-2999 are
    // unassigned; 3000-4999 belong to libraries and applications.
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Err(FrameError::Protocol("a close code a peer may not send"));
    }
    std::str::from_utf8(reason).map_err(|_| FrameError::BadUtf8)?;
    Ok(())
}

struct Frame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

fn complete(opcode: u8, data: Vec<u8>) -> Result<Incoming, FrameError> {
    if opcode == TEXT {
        String::from_utf8(data)
            .map(Incoming::Text)
            .map_err(|_| FrameError::BadUtf8)
    } else {
        Ok(Incoming::Binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser sends it: masked.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, FrameError> {
        let mut d = Decoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Byte by byte: a message split anywhere must come out whole.
        for b in bytes {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = d.decode(&mut buf)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn server_frames_have_the_right_length_encoding() {
        for (n, head) in [(5, vec![0x81, 5]), (300, vec![0x81, 126, 1, 44])] {
            let mut out = Vec::new();
            encode(&mut out, TEXT, &vec![b'x'; n]);
            assert_eq!(&out[..head.len()], &head[..]);
            assert_eq!(out.len(), head.len() + n);
        }
        let mut out = Vec::new();
        encode(&mut out, TEXT, &vec![b'x'; 70_000]);
        assert_eq!(&out[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn close_reason_is_cut_to_fit_a_control_frame() {
        let mut out = Vec::new();
        encode_close(&mut out, 1012, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        let len = out[1] as usize;
        assert!(len <= MAX_CONTROL_PAYLOAD, "{len}");
        assert_eq!(&out[2..4], &1012u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn masked_messages_split_anywhere_decode_whole() {
        let mut bytes = client_frame(true, TEXT, br#"{"type":"ping"}"#);
        bytes.extend(client_frame(false, TEXT, b"hel"));
        bytes.extend(client_frame(true, PING, b"p"));
        bytes.extend(client_frame(true, CONTINUATION, b"lo"));
        bytes.extend(client_frame(true, BINARY, &[0, 1, 2]));
        bytes.extend(client_frame(true, TEXT, &vec![b'a'; 300]));
        bytes.extend(client_frame(true, CLOSE, &1000u16.to_be_bytes()));
        bytes.extend(client_frame(true, CLOSE, &[]));
        let got = decode_all(&bytes, 1024).expect("valid frames");
        assert_eq!(
            got,
            vec![
                Incoming::Text(r#"{"type":"ping"}"#.into()),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("hello".into()),
                Incoming::Binary,
                Incoming::Text("a".repeat(300)),
                Incoming::Close,
                Incoming::Close,
            ]
        );
    }

    #[test]
    fn too_big_is_refused_from_the_header() {
        // Only the header of a 16 MiB frame: refused without its payload.
        let frame = client_frame(true, TEXT, &vec![b'x'; 70_000]);
        assert_eq!(decode_all(&frame[..14], 1024), Err(FrameError::TooBig));
        // Fragments that add up past the limit.
        let mut bytes = client_frame(false, TEXT, &[b'x'; 600]);
        bytes.extend(client_frame(true, CONTINUATION, &[b'x'; 600]));
        assert_eq!(decode_all(&bytes, 1024), Err(FrameError::TooBig));
    }

    #[test]
    fn close_frames_carry_a_sendable_code_and_a_utf8_reason() {
        let close = |payload: &[u8]| decode_all(&client_frame(true, CLOSE, payload), 1024);
        assert_eq!(close(&4000u16.to_be_bytes()), Ok(vec![Incoming::Close]));
        assert_eq!(
            close(&[&1001u16.to_be_bytes()[..], b"bye"].concat()),
            Ok(vec![Incoming::Close])
        );
        for bad in [
            &[3u8][..],
            &1005u16.to_be_bytes(),
            &999u16.to_be_bytes(),
            &5000u16.to_be_bytes(),
        ] {
            assert!(
                matches!(close(bad), Err(FrameError::Protocol(_))),
                "{bad:?}"
            );
        }
        assert_eq!(close(&[0x03, 0xE8, 0xff]), Err(FrameError::BadUtf8));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let utf = client_frame(true, TEXT, &[b'{', 0xff, 0xfe, b'}']);
        assert_eq!(decode_all(&utf, 1024), Err(FrameError::BadUtf8));
        let mut unmasked = client_frame(true, TEXT, b"x");
        unmasked[1] &= 0x7F;
        assert!(matches!(
            decode_all(&unmasked, 1024),
            Err(FrameError::Protocol(_))
        ));
        for bad in [
            client_frame(true, 0x3, b"x"),
            client_frame(false, PING, b"x"),
            client_frame(true, PING, &[0; 126]),
            client_frame(true, CONTINUATION, b"x"),
            [
                client_frame(false, TEXT, b"a"),
                client_frame(true, TEXT, b"b"),
            ]
            .concat(),
            {
                let mut f = client_frame(true, TEXT, b"x");
                f[0] |= 0x40;
                f
            },
        ] {
            assert!(
                matches!(decode_all(&bad, 1024), Err(FrameError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, decoding ends in a message, a wait for
        /// more bytes or an error: never a panic, never an endless loop.
        #[test]
        fn any_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            max in 0usize..4096,
        ) {
            let mut d = Decoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }

        /// Text split into fragments anywhere decodes to the same text.
        #[test]
        fn fragmented_text_reassembles(text in "\\PC{0,300}", cuts in proptest::collection::vec(0usize..300, 0..5)) {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.push(0);
            points.push(bytes.len());
            points.sort_unstable();
            points.dedup();
            let pieces: Vec<&[u8]> = if points.len() < 2 {
                vec![bytes]
            } else {
                points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
            };
            let mut wire = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                let opcode = if i == 0 { TEXT } else { CONTINUATION };
                wire.extend(client_frame(i + 1 == pieces.len(), opcode, piece));
            }
            let got = decode_all(&wire, 4096).expect("valid fragments");
            proptest::prop_assert_eq!(got, vec![Incoming::Text(text)]);
        }
    }
}
