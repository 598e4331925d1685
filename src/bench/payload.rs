//! Event data of the benchmark.

/// Event data for every system alike: successive slices of a 4 MiB pool of pseudo-random
/// bytes (xorshift, fixed seed), so no two nearby events carry the same data. The
/// agentmesh outbox compresses its records with LZ4; identical or patterned test data
/// would let it compress the data itself and flatter the disk and memory figures.
pub(super) struct Payloads {
    pool: bytes::Bytes,
    size: usize,
    at: usize,
}

impl Payloads {
    const POOL: usize = 4 << 20;

    /// `stream` picks a different starting point for each publisher.
    pub(super) fn new(size: usize, stream: usize) -> Payloads {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let pool: Vec<u8> = (0..Self::POOL.max(2 * size))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Payloads {
            at: (stream * 7919 * size.max(1)) % (pool.len() - size),
            pool: pool.into(),
            size,
        }
    }

    /// The next event's data.
    pub(super) fn next(&mut self) -> bytes::Bytes {
        if self.at + self.size > self.pool.len() {
            self.at = 0;
        }
        let b = self.pool.slice(self.at..self.at + self.size);
        self.at += self.size.max(1);
        b
    }
}
