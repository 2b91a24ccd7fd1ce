//! Reading a whole HTTP body into memory, for both sides of the hop.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Body;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum Gather<E> {
    /// More bytes than the limit.
    TooLarge,
    /// More pieces (HTTP/1 chunks, HTTP/2 DATA frames) than the limit.
    TooManyPieces,
    /// The body's own error: the connection failed or the framing was bad.
    Broken(E),
}

/// Reads `body` whole, at most `limit` bytes in at most `max_pieces` pieces. A body that
/// comes in one piece, as nearly every one does, is that piece, copied nowhere (it may be
/// a slice of the connection's read buffer: hold it no longer than it is read); one in
/// several is copied as it arrives into one buffer of `expected` bytes or more, so the
/// memory it holds is in proportion to its bytes whatever its framing: pieces kept as they
/// came would each hold a buffer of their own (or a slice pinning the connection's read
/// buffer), tens of bytes per byte of a body sent in one-byte chunks.
pub async fn gather<B: Body<Data = Bytes>>(
    body: B,
    expected: usize,
    limit: usize,
    max_pieces: usize,
) -> Result<Bytes, Gather<B::Error>> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let (mut pieces, mut length) = (0usize, 0usize);
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Gather::Broken)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        pieces += 1;
        length += data.len();
        if length > limit {
            return Err(Gather::TooLarge);
        }
        if pieces > max_pieces {
            return Err(Gather::TooManyPieces);
        }
        if pieces == 1 {
            first = data;
            continue;
        }
        joined
            .get_or_insert_with(|| {
                let mut buffer = BytesMut::with_capacity(expected.max(length));
                buffer.extend_from_slice(&first);
                buffer
            })
            .extend_from_slice(&data);
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::Frame;

    use super::*;

    /// A body that comes in the pieces given.
    struct Pieces(VecDeque<&'static [u8]>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p)))),
            )
        }
    }

    async fn gathered(
        parts: &[&'static [u8]],
        limit: usize,
        max_pieces: usize,
    ) -> Result<Bytes, ()> {
        gather(
            Pieces(parts.iter().copied().collect()),
            4,
            limit,
            max_pieces,
        )
        .await
        .map_err(|e| match e {
            Gather::TooLarge => (),
            Gather::TooManyPieces => (),
            Gather::Broken(never) => match never {},
        })
    }

    #[tokio::test]
    async fn one_piece_is_the_body_and_several_are_joined_in_order() {
        let one: &'static [u8] = b"{\"a\":1}";
        let body = gathered(&[one], 100, 10).await.unwrap();
        assert_eq!(body, one);
        assert_eq!(body.as_ptr(), one.as_ptr(), "one piece is not copied");
        let joined = gathered(&[b"{\"a", b"", b"\":", b"1}"], 100, 10)
            .await
            .unwrap();
        assert_eq!(joined, &b"{\"a\":1}"[..]);
        assert_eq!(gathered(&[], 100, 10).await.unwrap(), &b""[..]);
    }

    #[tokio::test]
    async fn bytes_and_pieces_are_bounded() {
        assert!(gathered(&[b"12345", b"6"], 6, 10).await.is_ok());
        assert!(gathered(&[b"12345", b"67"], 6, 10).await.is_err());
        assert!(gathered(&[b"1234567"], 6, 10).await.is_err());
        assert!(gathered(&[b"1", b"2", b"3"], 100, 3).await.is_ok());
        assert!(gathered(&[b"1", b"2", b"3", b"4"], 100, 3).await.is_err());
    }
}
