//! gRPC's message framing over HTTP/2 (the gRPC protocol's `Length-Prefixed-Message`): a
//! compression flag byte, the length as a big-endian u32, then the message.

/// `message` as one uncompressed gRPC message.
pub(crate) fn encode(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Every message in `body`, in order. A compressed message (flag 1: we never ask for
/// compression, so the upstream should not send one) or a body that ends inside a message is
/// an error.
pub(crate) fn decode_all(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let Some((head, rest)) = body.split_first_chunk::<5>() else {
            return Err("the answer ends inside a gRPC message prefix".into());
        };
        if head[0] != 0 {
            return Err("the answer is a compressed gRPC message".into());
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if rest.len() < length {
            return Err("the answer ends inside a gRPC message".into());
        }
        let (message, rest) = rest.split_at(length);
        messages.push(message);
        body = rest;
    }
    Ok(messages)
}
