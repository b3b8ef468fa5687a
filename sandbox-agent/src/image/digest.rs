//! SHA-256 digests as images name their content (`sha256:<64 hex>`), and a reader that
//! computes one over what passes through it.
use std::io::{self, Read};

use oci_spec::image::{Descriptor, DigestAlgorithm};

use super::ImageError;

/// A SHA-256 digest; its hex form is checked, so it is safe in a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);

impl Sha256 {
    /// `sha256:<64 lower-case hex>`; anything else is refused (other algorithms too).
    pub fn parse(path: &str, text: &str) -> Result<Self, ImageError> {
        match text.strip_prefix("sha256:") {
            Some(hex) if is_hex64(hex) => Ok(Self(hex.to_owned())),
            Some(_) => Err(ImageError::bad(path, format!("bad digest \"{text}\""))),
            None => Err(ImageError::bad(
                path,
                format!("digest \"{text}\": only sha256 digests are supported"),
            )),
        }
    }

    pub fn of_descriptor(path: &str, d: &Descriptor) -> Result<Self, ImageError> {
        if *d.digest().algorithm() != DigestAlgorithm::Sha256 {
            return Err(ImageError::bad(
                path,
                format!("digest {}: only sha256 digests are supported", d.digest()),
            ));
        }
        Self::parse(path, d.digest().as_ref())
    }

    /// A cache name (`<hex>`) back to a digest.
    pub fn from_hex(hex: &str) -> Option<Self> {
        is_hex64(hex).then(|| Self(hex.to_owned()))
    }

    pub fn of(data: &[u8]) -> Self {
        Self(hex(
            ring::digest::digest(&ring::digest::SHA256, data).as_ref()
        ))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }

    /// Where an OCI layout keeps the blob.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.0)
    }

    /// The first 12 hex digits, as progress shows it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Passes reads through, hashing them.
pub struct Hashing<R> {
    inner: R,
    context: ring::digest::Context,
    pub bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            context: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }

    /// Reads what is left (a tar's end padding, a gzip trailer), then the digest of all of it.
    pub fn finish(mut self) -> io::Result<(Sha256, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Sha256(hex(self.context.finish().as_ref())), self.inner))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    #[test]
    fn digests_are_checked_and_computed() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Sha256::of(b"").to_string(), empty);
        assert_eq!(Sha256::parse("i", empty).unwrap(), Sha256::of(b""));
        assert!(Sha256::parse("i", "sha256:../../etc").is_err());
        assert!(Sha256::parse("i", "sha512:00").is_err());
        assert!(Sha256::parse("i", &empty.to_uppercase()).is_err());
    }
}
