//! The one refusal herd answers itself: `503 Service Unavailable` with `Retry-After` and
//! `Connection: close`, written by hand, as bytes, for a connection over a worker's cap
//! (answered before its request is read) and for one the primary answers because no worker
//! can serve (the primary runs no HTTP stack).

/// Seconds a client should wait before it retries.
const RETRY_AFTER_SECS: u32 = 1;

/// The whole answer as bytes on the wire, with `{"error": error}` as its JSON body.
pub(crate) fn service_unavailable(error: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": error }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_is_a_complete_response() {
        let bytes = super::service_unavailable("no \"worker\" is serving");
        let text = std::str::from_utf8(&bytes).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("\r\nretry-after: 1\r\n"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["error"], "no \"worker\" is serving");
    }
}
