//! Images of chat requests: `data:` URIs only (a server never reads its own files, and fetching
//! URLs is not offered), bounded in bytes and pixels, decoded off the async threads, and their
//! embeddings cached by content hash so a conversation does not re-encode an image every turn.

use super::api::ApiError;
use crate::engine::ImageEmbeddings;
use base64::Engine as _;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// SHA-256 of an image's bytes.
pub type ImageKey = [u8; 32];

/// Decodes a `data:[<mime>][;base64],<data>` URI to bytes, refusing more than `max_bytes`
/// before decoding anything.
pub fn decode_data_uri(url: &str, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(m.to_string()).param("messages");
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(bad(
            "image_url must be a data: URI (base64 PNG, JPEG or WebP); this server does not \
             fetch URLs or read files",
        ));
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
