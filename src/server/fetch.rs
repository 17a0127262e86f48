//! http(s) image URLs, fetched only when the server was started with `--image-urls public` (or
//! `any`), within a byte cap, a total timeout and a redirect limit. Never a server-side file:
//! only the `http` and `https` schemes, without credentials.
//!
//! In `public` mode every address the server would connect to must be globally routable
//! ([`blocked_reason`]): IP literals are checked in the URL and in every redirect target, and host
//! names are resolved by [`GuardedResolver`], the HTTP client's own resolver, which refuses a
//! name if any of its addresses is not public and hands the client only the addresses it
//! checked. There is no check-then-resolve gap for DNS rebinding to use, and no proxy (the
//! client ignores proxy variables), so the addresses checked are the addresses connected to.
//! `any` skips the address guard: for trusted networks and loopback tests.

use super::api::ApiError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Whether and where `image_url` parts may point at http(s) URLs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageUrls {
    /// `data:` URIs only.
    #[default]
    Off,
    /// http(s) URLs of globally routable addresses only.
    Public,
    /// Any http(s) URL, loopback and private networks included.
    Any,
}

impl ImageUrls {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageUrls::Off => "off",
            ImageUrls::Public => "public",
            ImageUrls::Any => "any",
        }
    }
}

impl fmt::Display for ImageUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageUrls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ImageUrls::Off),
            "public" => Ok(ImageUrls::Public),
            "any" => Ok(ImageUrls::Any),
            _ => Err(format!("`{s}`: expected off, public or any")),
        }
    }
}

/// Why an image URL was not fetched. Every variant is the client's fault or the origin's, and
/// answers 400 with the message and [`FetchError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(
        "image_url must be a data: URI (base64 PNG, JPEG or WebP): this server does not fetch \
         image URLs (start it with `--image-urls public` to allow http(s) URLs) and never reads \
         its own files"
    )]
    Disabled,
    #[error("image_url is not a valid URL: {0}")]
    BadUrl(String),
    #[error("image_url scheme `{0}:` is not allowed: only http(s) URLs and data: URIs")]
    Scheme(String),
    #[error("image_url may not carry a user name or password")]
    Credentials,
    #[error(
        "image_url host `{host}` has the address {addr} ({reason}); only globally routable \
         addresses are fetched (--image-urls public)"
    )]
    Blocked {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
    #[error("image_url host `{host}` could not be resolved: {msg}")]
    Resolve { host: String, msg: String },
    #[error("fetching image_url took longer than the {0:?} limit")]
    Timeout(Duration),
    #[error("image_url redirected more than {0} times")]
    TooManyRedirects(usize),
    #[error("image_url answered HTTP {status} ({url})")]
    Status { status: u16, url: String },
    #[error("the image at image_url is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("fetching image_url failed: {0}")]
    Transport(String),
}

impl FetchError {
    /// The OpenAI error `code` of the response.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Disabled => "image_urls_disabled",
            FetchError::BadUrl(_) | FetchError::Scheme(_) | FetchError::Credentials => {
                "invalid_image_url"
            }
            FetchError::Blocked { .. } => "image_url_blocked",
            FetchError::Resolve { .. } | FetchError::Transport(_) => "image_url_unreachable",
            FetchError::Timeout(_) => "image_url_timeout",
            FetchError::TooManyRedirects(_) => "image_url_too_many_redirects",
            FetchError::Status { .. } => "image_url_http_error",
            FetchError::TooLarge(_) => "image_too_large",
        }
    }

    /// The 400 answer for image number `index` (from 0) of a request.
    pub fn into_api(self, index: usize) -> ApiError {
        ApiError::bad_request(format!("image {}: {self}", index + 1))
            .param("messages")
            .code(self.code())
    }
}

/// Why `ip` is not a globally routable unicast address, or `None` when it is. IPv4-mapped,
/// NAT64 and 6to4 IPv6 addresses are judged by the IPv4 address they carry.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    Some(match o {
        [0, 0, 0, 0] => "unspecified",
        [0, ..] => "\"this network\" 0.0.0.0/8",
        [10, ..] => "private",
        [127, ..] => "loopback",
        [169, 254, ..] => "link-local",
        [192, 168, ..] => "private",
        [255, 255, 255, 255] => "broadcast",
        _ if in_net([172, 16, 0, 0], 12) => "private",
        _ if in_net([100, 64, 0, 0], 10) => "carrier-grade NAT",
        _ if in_net([192, 0, 0, 0], 24) => "IETF protocol assignments",
        _ if in_net([192, 0, 2, 0], 24)
            || in_net([198, 51, 100, 0], 24)
            || in_net([203, 0, 113, 0], 24) =>
        {
            "documentation"
        }
        _ if in_net([192, 88, 99, 0], 24) => "6to4 relay anycast",
        _ if in_net([198, 18, 0, 0], 15) => "benchmarking",
        _ if in_net([224, 0, 0, 0], 4) => "multicast",
        _ if in_net([240, 0, 0, 0], 4) => "reserved",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let v4_at = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Addresses that carry an IPv4 address reach it: judge that one.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4).map(|_| "IPv4-mapped non-public address");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(v4_at(s[6], s[7])).map(|_| "NAT64 of a non-public address");
    }
    if s[0] == 0x2002 {
        return blocked_v4(v4_at(s[1], s[2])).map(|_| "6to4 of a non-public address");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (deprecated)",
        _ if s[0] & 0xfe00 == 0xfc00 => "unique-local",
        _ if s[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if s[0] & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        _ if s[0] & 0xff00 == 0xff00 => "multicast",
        _ if s[0] == 0x2001 && s[1] == 0x0db8 => "documentation",
        _ if s[0] == 0x3fff && s[1] & 0xf000 == 0 => "documentation",
        // 2001::/23: Teredo, benchmarking, ORCHID and other protocol assignments.
        _ if s[0] == 0x2001 && s[1] & 0xfe00 == 0 => "IETF protocol assignments",
        // Global unicast is 2000::/3; the rest is reserved, discard-only, local-use NAT64, ...
        _ if s[0] & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    })
}

/// `Err` with the first address of `addrs` that is not public (all must be), else the addresses.
pub fn guard_addrs(host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, FetchError> {
    if let Some((addr, reason)) = addrs
        .iter()
        .find_map(|a| blocked_reason(a.ip()).map(|r| (a.ip(), r)))
    {
        return Err(FetchError::Blocked {
            host: host.to_string(),
            addr,
            reason,
        });
    }
    if addrs.is_empty() {
        return Err(FetchError::Resolve {
            host: host.to_string(),
            msg: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// Checks a URL of a request or a redirect target: http(s), no credentials, a host, and (in
/// `public` mode) an IP-literal host that is public. Host names are checked when resolved.
pub fn check_url(url: &Url, mode: ImageUrls) -> Result<(), FetchError> {
    match mode {
        ImageUrls::Off => return Err(FetchError::Disabled),
        ImageUrls::Public | ImageUrls::Any => {}
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(url.scheme().to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials);
    }
    let ip = match url.host() {
        None => return Err(FetchError::BadUrl("no host".into())),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if mode == ImageUrls::Public {
        if let Some(reason) = blocked_reason(ip) {
            return Err(FetchError::Blocked {
                host: url.host_str().unwrap_or_default().to_string(),
                addr: ip,
                reason,
            });
        }
    }
    Ok(())
}

/// Parses and checks the URL of an `image_url` part (not a `data:` URI).
pub fn parse_url(text: &str, mode: ImageUrls) -> Result<Url, FetchError> {
    if mode == ImageUrls::Off {
        return Err(FetchError::Disabled);
    }
    let url = Url::parse(text).map_err(|e| FetchError::BadUrl(e.to_string()))?;
    check_url(&url, mode)?;
    Ok(url)
}

/// The redirect decision: `hops` redirects followed so far (this one not counted).
pub fn check_redirect(
    next: &Url,
    hops: usize,
    max_redirects: usize,
    mode: ImageUrls,
) -> Result<(), FetchError> {
    if hops >= max_redirects {
        return Err(FetchError::TooManyRedirects(max_redirects));
    }
    check_url(next, mode)
}

/// The HTTP client's resolver in `public` mode: the system resolver, then [`guard_addrs`].
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| FetchError::Resolve {
                    host: host.clone(),
                    msg: e.to_string(),
                })?
                .collect();
            let addrs = guard_addrs(&host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Fetches image URLs for the server (`None` from [`Fetcher::new`] when they are off).
pub struct Fetcher {
    client: reqwest::Client,
    mode: ImageUrls,
    max_bytes: usize,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(
        mode: ImageUrls,
        timeout: Duration,
        max_redirects: usize,
        max_bytes: usize,
    ) -> crate::Result<Option<Self>> {
        if mode == ImageUrls::Off {
            return Ok(None);
        }
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` starts with the URL first requested.
            let hops = attempt.previous().len().saturating_sub(1);
            match check_redirect(attempt.url(), hops, max_redirects, mode) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .timeout(timeout)
            .connect_timeout(timeout)
            .referer(false)
            .user_agent(concat!("autoneural/", env!("CARGO_PKG_VERSION")));
        if mode == ImageUrls::Public {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        let client = builder
            .build()
            .map_err(|e| crate::Error::input(format!("cannot start the image URL client: {e}")))?;
        Ok(Some(Self {
            client,
            mode,
            max_bytes,
            timeout,
        }))
    }

    /// The body of `url` (checked by [`parse_url`]), all of it within the timeout and the cap.
    pub async fn fetch(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        check_url(url, self.mode)?;
        match tokio::time::timeout(self.timeout, self.fetch_inner(url)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        }
    }

    async fn fetch_inner(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        let mut resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "image/*")
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                status: resp.status().as_u16(),
                url: resp.url().to_string(),
            });
        }
        let declared = resp.content_length().unwrap_or(0);
        if declared > self.max_bytes as u64 {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        // Content-Length is a hint: the cap is enforced on what arrives.
        let mut body = Vec::with_capacity(declared as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(e))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Our own error if the redirect policy or the resolver raised it, else what went wrong.
    fn classify(&self, e: reqwest::Error) -> FetchError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut chain = Vec::new();
        while let Some(s) = source {
            if let Some(ours) = s.downcast_ref::<FetchError>() {
                return ours.clone();
            }
            chain.push(s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            return FetchError::Timeout(self.timeout);
        }
        chain.dedup();
        FetchError::Transport(chain.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(ip: &str) -> Option<&'static str> {
        blocked_reason(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_classification() {
        for (ip, why) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\" 0.0.0.0/8"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"), // cloud metadata
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.200", "documentation"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "223.255.255.255",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_classification() {
        for (ip, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::127.0.0.1", "IPv4-compatible (deprecated)"),
            ("::8.8.8.8", "IPv4-compatible (deprecated)"),
            ("::ffff:127.0.0.1", "IPv4-mapped non-public address"),
            ("::ffff:10.1.2.3", "IPv4-mapped non-public address"),
            ("::ffff:169.254.169.254", "IPv4-mapped non-public address"),
            ("::ffff:0.0.0.0", "IPv4-mapped non-public address"),
            ("64:ff9b::7f00:1", "NAT64 of a non-public address"),
            ("64:ff9b::192.168.0.1", "NAT64 of a non-public address"),
            ("64:ff9b:1::1", "reserved"), // local-use NAT64
            ("2002:7f00:1::1", "6to4 of a non-public address"),
            ("2002:0a00:0001::", "6to4 of a non-public address"),
            ("fc00::1", "unique-local"),
            ("fd12:3456:789a::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("3fff:0fff::1", "documentation"),
            ("2001::1", "IETF protocol assignments"), // Teredo
            ("2001:2::1", "IETF protocol assignments"), // benchmarking
            ("2001:1ff::1", "IETF protocol assignments"),
            ("100::1", "reserved"), // discard-only
            ("1::1", "reserved"),
            ("4000::1", "reserved"),
            ("5f00::1", "reserved"), // SRv6 SIDs
            ("e000::1", "reserved"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2002:0808:0808::1", // 6to4 of 8.8.8.8
            "3fff:1000::1",
            "3ffe::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2a00:1450:4001:80b::200e",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn urls_schemes_credentials_and_literal_hosts() {
        let p = |u: &str, m| parse_url(u, m);
        assert_eq!(
            p("https://example.com/a.png", ImageUrls::Off),
            Err(FetchError::Disabled)
        );
        assert_eq!(
            p("file:///etc/passwd", ImageUrls::Off),
            Err(FetchError::Disabled)
        );
        assert!(p("https://example.com/a.png", ImageUrls::Public).is_ok());
        assert!(p("http://example.com:8080/a.png", ImageUrls::Public).is_ok());
        for m in [ImageUrls::Public, ImageUrls::Any] {
            assert_eq!(
                p("file:///etc/passwd", m),
                Err(FetchError::Scheme("file".into()))
            );
            assert_eq!(
                p("ftp://example.com/a", m),
                Err(FetchError::Scheme("ftp".into()))
            );
            assert_eq!(
                p("gopher://x/", m),
                Err(FetchError::Scheme("gopher".into()))
            );
            assert_eq!(
                p("https://u:p@example.com/", m),
                Err(FetchError::Credentials)
            );
            assert_eq!(p("https://u@example.com/", m), Err(FetchError::Credentials));
            assert!(matches!(p("not a url", m), Err(FetchError::BadUrl(_))));
        }
        // IP literals in every spelling the URL parser accepts.
        for u in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00::1]:8080/",
            "http://100.64.1.1/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
        ] {
            assert!(
                matches!(p(u, ImageUrls::Public), Err(FetchError::Blocked { .. })),
                "{u}: {:?}",
                p(u, ImageUrls::Public)
            );
            assert!(p(u, ImageUrls::Any).is_ok(), "{u}");
        }
        let e = p("http://127.0.0.1:9/x.png", ImageUrls::Public).unwrap_err();
        assert!(e.to_string().contains("127.0.0.1 (loopback)"), "{e}");
        assert_eq!(e.code(), "image_url_blocked");
        assert!(p("http://8.8.8.8/x.png", ImageUrls::Public).is_ok());
        assert!(p("http://[2606:4700::1]/x.png", ImageUrls::Public).is_ok());
    }

    #[test]
    fn redirect_policy_counts_hops_and_guards_every_target() {
        let u = |s: &str| Url::parse(s).unwrap();
        let public = u("https://images.example.com/b.png");
        for hops in 0..3 {
            assert_eq!(check_redirect(&public, hops, 3, ImageUrls::Public), Ok(()));
        }
        assert_eq!(
            check_redirect(&public, 3, 3, ImageUrls::Public),
            Err(FetchError::TooManyRedirects(3))
        );
        assert_eq!(
            check_redirect(&public, 0, 0, ImageUrls::Any),
            Err(FetchError::TooManyRedirects(0))
        );
        // A public host redirecting to loopback, a private network or the metadata service.
        for target in [
            "http://127.0.0.1:8080/admin",
            "http://[::1]/",
            "http://10.0.0.5/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            let e = check_redirect(&u(target), 1, 3, ImageUrls::Public).unwrap_err();
            assert!(matches!(e, FetchError::Blocked { .. }), "{target}: {e:?}");
            assert_eq!(check_redirect(&u(target), 1, 3, ImageUrls::Any), Ok(()));
        }
        assert_eq!(
            check_redirect(&u("file:///etc/passwd"), 0, 3, ImageUrls::Any),
            Err(FetchError::Scheme("file".into()))
        );
        assert_eq!(
            check_redirect(&u("http://a:b@example.com/"), 0, 3, ImageUrls::Any),
            Err(FetchError::Credentials)
        );
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let a = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        assert_eq!(
            guard_addrs("h", vec![a("8.8.8.8"), a("2606:4700::1")]),
            Ok(vec![a("8.8.8.8"), a("2606:4700::1")])
        );
        // One private answer among public ones is refused, not filtered out.
        assert!(matches!(
            guard_addrs("h", vec![a("8.8.8.8"), a("10.0.0.1")]),
            Err(FetchError::Blocked {
                reason: "private",
                ..
            })
        ));
        assert!(matches!(
            guard_addrs("h", vec![]),
            Err(FetchError::Resolve { .. })
        ));
    }

    /// The resolver the client uses in `public` mode refuses a name that resolves to loopback
    /// (`localhost`, from the hosts file: no traffic leaves the machine).
    #[test]
    fn the_guarded_resolver_refuses_localhost() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(GuardedResolver.resolve("localhost".parse().unwrap()))
            .err()
            .expect("refused");
        let e = e.downcast_ref::<FetchError>().expect("our error");
        assert!(
            matches!(
                e,
                FetchError::Blocked {
                    reason: "loopback",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    /// `public` mode end to end against a loopback listener: the request never connects.
    #[test]
    fn public_mode_never_connects_to_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let f = Fetcher::new(ImageUrls::Public, Duration::from_secs(5), 3, 1000)
            .unwrap()
            .unwrap();
        for url in [
            format!("http://127.0.0.1:{port}/a.png"),
            format!("http://localhost:{port}/a.png"),
        ] {
            let e = rt
                .block_on(f.fetch(&Url::parse(&url).unwrap()))
                .unwrap_err();
            assert!(matches!(e, FetchError::Blocked { .. }), "{url}: {e:?}");
        }
        assert!(listener.accept().is_err(), "something connected");
    }
}
