//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against the limit before anything is allocated, so
//! a hostile length prefix costs the peer its connection and us nothing.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::TransportError;

pub const LENGTH_BYTES: usize = 4;

/// Writes one frame. A payload over `bytes_max` is refused before anything
/// is written.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &[u8],
    bytes_max: usize,
) -> Result<(), TransportError> {
    if payload.len() > bytes_max {
        return Err(TransportError::FrameTooLarge { len: payload.len(), max: bytes_max });
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| TransportError::FrameTooLarge { len: payload.len(), max: bytes_max })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    bytes_max: usize,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut header = [0u8; LENGTH_BYTES];
    let mut filled = 0;
    while filled < LENGTH_BYTES {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 { Ok(None) } else { Err(TransportError::Truncated) };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > bytes_max {
        return Err(TransportError::FrameTooLarge { len, max: bytes_max });
    }
    let mut payload = vec![0u8; len];
    match reader.read_exact(&mut payload).await {
        Ok(_) => Ok(Some(payload)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TransportError::Truncated),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    async fn encode(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            write_frame(&mut out, p, MAX).await.unwrap();
        }
        out
    }

    #[test]
    fn round_trip_of_many_frames_in_one_stream() {
        block_on(async {
            let payloads: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; i * 7]).collect();
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let bytes = encode(&refs).await;
            let mut reader = bytes.as_slice();
            for p in &payloads {
                assert_eq!(read_frame(&mut reader, MAX).await.unwrap().as_deref(), Some(p.as_slice()));
            }
            assert!(read_frame(&mut reader, MAX).await.unwrap().is_none(), "clean end after the last frame");
        });
    }

    #[test]
    fn oversize_is_refused_both_ways() {
        block_on(async {
            let mut out = Vec::new();
            let big = vec![0u8; MAX + 1];
            assert!(matches!(
                write_frame(&mut out, &big, MAX).await,
                Err(TransportError::FrameTooLarge { len, max: MAX }) if len == MAX + 1
            ));
            assert!(out.is_empty(), "nothing written for a refused frame");
            // A 4 GiB length prefix is refused without allocating it.
            let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
            assert!(matches!(
                read_frame(&mut reader, MAX).await,
                Err(TransportError::FrameTooLarge { len: 0xffff_ffff, .. })
            ));
        });
    }

    #[test]
    fn truncated_input_is_an_error_not_a_frame() {
        block_on(async {
            let bytes = encode(&[b"hello world"]).await;
            for cut in 1..bytes.len() {
                let mut reader = &bytes[..cut];
                assert!(matches!(read_frame(&mut reader, MAX).await, Err(TransportError::Truncated)), "cut at {cut}");
            }
        });
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            block_on(async {
                let mut reader = bytes.as_slice();
                // Read until the stream ends or errs; every outcome is a value.
                while let Ok(Some(frame)) = read_frame(&mut reader, MAX).await {
                    assert!(frame.len() <= MAX);
                }
            });
        }

        #[test]
        fn any_payloads_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20)) {
            block_on(async {
                let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
                let bytes = encode(&refs).await;
                let mut reader = bytes.as_slice();
                for p in &payloads {
                    assert_eq!(read_frame(&mut reader, MAX).await.unwrap().as_deref(), Some(p.as_slice()));
                }
            });
        }
    }
}
