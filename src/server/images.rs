//! Images of chat requests: `data:` URIs, or http(s) URLs when the server allows them
//! ([`super::fetch`]; a server never reads its own files), bounded in bytes and pixels, decoded
//! off the async threads, and their embeddings cached by content hash (whichever way the bytes
//! came) so a conversation does not re-encode an image every turn.

use super::api::ApiError;
use super::fetch::{self, ImageUrls};
use crate::engine::ImageEmbeddings;
use base64::Engine as _;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// SHA-256 of an image's bytes.
pub type ImageKey = [u8; 32];

/// Where an image of a request comes from.
#[derive(Debug)]
pub enum ImageSource {
    /// Decoded from a `data:` URI.
    Bytes(Vec<u8>),
    /// To fetch (already checked against the server's `--image-urls` mode).
    Url(reqwest::Url),
}

/// The source of image number `index` (from 0) of a request: a `data:` URI decoded (at most
/// `max_bytes`), or an http(s) URL parsed and checked against `mode`.
pub fn source_of(
    url: &str,
    mode: ImageUrls,
    max_bytes: usize,
    index: usize,
) -> Result<ImageSource, ApiError> {
    if url
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("data:"))
    {
        decode_data_uri(url, max_bytes).map(ImageSource::Bytes)
    } else {
        fetch::parse_url(url, mode)
            .map(ImageSource::Url)
            .map_err(|e| e.into_api(index))
    }
}

/// Decodes a `data:[<mime>][;base64],<data>` URI to bytes, refusing more than `max_bytes`
/// before decoding anything.
pub fn decode_data_uri(url: &str, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(m.to_string()).param("messages");
    let rest = match url.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("data:") => &url[5..],
        _ => return Err(bad("not a data: URI")),
    };
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| bad("malformed data: URI (no comma)"))?;
    if !meta.ends_with(";base64") {
        return Err(bad("data: URI images must be base64-encoded"));
    }
    // 4 base64 characters carry 3 bytes.
    if payload.len() / 4 * 3 > max_bytes + 3 {
        return Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("an image is larger than the {max_bytes}-byte limit"),
        )
        .param("messages"));
    }
    let cleaned: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| bad(&format!("invalid base64 in a data: URI: {e}")))
}

pub fn key_of(bytes: &[u8]) -> ImageKey {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A small LRU of image embeddings by content hash.
pub struct EmbeddingCache {
    capacity: usize,
    entries: Mutex<VecDeque<(ImageKey, Arc<ImageEmbeddings>)>>,
}

impl EmbeddingCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(VecDeque::new()),
        }
    }

    pub fn get(&self, key: &ImageKey) -> Option<Arc<ImageEmbeddings>> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let i = e.iter().position(|(k, _)| k == key)?;
        let hit = e.remove(i)?;
        let v = hit.1.clone();
        e.push_front(hit);
        Some(v)
    }

    pub fn insert(&self, key: ImageKey, value: Arc<ImageEmbeddings>) {
        if self.capacity == 0 {
            return;
        }
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(k, _)| *k != key);
        e.push_front((key, value));
        e.truncate(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris() {
        let b = decode_data_uri("data:image/png;base64,aGVs\nbG8=", 100).unwrap();
        assert_eq!(b, b"hello");
        assert_eq!(
            decode_data_uri("http://x/a.png", 100).unwrap_err().status,
            400
        );
        assert_eq!(
            decode_data_uri("data:image/png,abc", 100)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            decode_data_uri("data:;base64,!!!!", 100)
                .unwrap_err()
                .status,
            400
        );
        let big = format!("data:image/png;base64,{}", "A".repeat(400));
        assert_eq!(decode_data_uri(&big, 100).unwrap_err().status, 413);
        assert_eq!(decode_data_uri("DATA:;base64,aGk=", 100).unwrap(), b"hi");
    }

    #[test]
    fn sources_follow_the_url_mode() {
        let src = |u: &str, m| source_of(u, m, 100, 1);
        assert!(matches!(
            src("data:image/png;base64,aGk=", ImageUrls::Off),
            Ok(ImageSource::Bytes(b)) if b == b"hi"
        ));
        let e = src("https://example.com/a.png", ImageUrls::Off).unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("image_urls_disabled")));
        assert!(e.message.starts_with("image 2: "), "{}", e.message);
        assert!(e.message.contains("--image-urls public"), "{}", e.message);
        assert!(matches!(
            src("https://example.com/a.png", ImageUrls::Public),
            Ok(ImageSource::Url(_))
        ));
        let e = src("http://127.0.0.1/a.png", ImageUrls::Public).unwrap_err();
        assert_eq!(e.code, Some("image_url_blocked"));
        let e = src("file:///etc/passwd", ImageUrls::Any).unwrap_err();
        assert_eq!(e.code, Some("invalid_image_url"));
    }

    #[test]
    fn cache_keeps_the_most_recent() {
        let c = EmbeddingCache::new(2);
        let e = || Arc::new(ImageEmbeddings::Float(Vec::new()));
        c.insert([1; 32], e());
        c.insert([2; 32], e());
        assert!(c.get(&[1; 32]).is_some()); // 1 is now the most recent
        c.insert([3; 32], e());
        assert!(c.get(&[2; 32]).is_none());
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
    }
}
