//! A bounded property test over the request decoders, the same entry point as the cargo-fuzz
//! target (runtime/fuzz): the committed seeds (runtime/fuzz/seeds/decoders) are mutated with a
//! fixed-seed generator and fed through every decoder. No input may panic, and no small input
//! may make a large allocation: a counting global allocator records the largest single
//! allocation, which must stay far below what the request's claimed shapes would need.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use kinfer_runtime::fuzz::{Models, decode_any};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The tests measure allocations one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The decoders never allocate more than this for the small inputs below (the 4-megapixel
/// image limit of the fuzz models allows up to 4M x 4 bytes for one decoded image).
const MAX_SINGLE_ALLOCATION: usize = 64 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const TOKENS: &[&[u8]] = &[
    b"1000000000000",
    b"-1",
    b"0",
    b"9223372036854775807",
    b"1e12",
    b"[]",
    b"{}",
    b"null",
    b"\"BYTES\"",
    b"\"FP32\"",
    b"[1000000000000]",
    b"\"binary_data_size\":4294967295",
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"\r\n--XyZ\r\n",
    b"\xff\xff\xff\xff",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 1 => {
                let i = 1 + rng.below(len - 1);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 1 => {
                let i = 1 + rng.below(len - 1);
                input[i] = rng.next() as u8;
            }
            2 if len > 2 => {
                let i = 1 + rng.below(len - 1);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            3 => {
                let i = 1 + rng.below(len.max(1));
                let tok = TOKENS[rng.below(TOKENS.len())];
                let i = i.min(input.len());
                input.splice(i..i, tok.iter().copied());
            }
            4 if len > 1 => input.truncate(1 + rng.below(len - 1)),
            5 => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if other.len() > 1 {
                    let a = 1 + rng.below(other.len() - 1);
                    let b = a + rng.below(other.len() - a);
                    let i = (1 + rng.below(len.max(1))).min(input.len());
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if !input.is_empty() => input[0] = rng.next() as u8,
            _ => {}
        }
    }
    input.truncate(1 << 16);
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decoders");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz seeds")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("seed"))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 8, "expected the committed seeds in {}", dir.display());
    seeds
}

#[test]
fn mutated_requests_never_panic_or_allocate_what_they_claim() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let models = Models::new().expect("fuzz models");
    let seeds = seeds();
    for s in &seeds {
        decode_any(&models, s);
    }
    let mut rng = Rng(0x6b69_6e66_6572_2026);
    let start = Instant::now();
    let budget =
        Duration::from_secs(std::env::var("KINFER_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8));
    let mut runs = 0u64;
    while start.elapsed() < budget && runs < 200_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        decode_any(&models, &input);
        runs += 1;
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= MAX_SINGLE_ALLOCATION, "an allocation of {largest} bytes from inputs under 64 KiB");
    eprintln!("{runs} mutated requests in {:?}; largest allocation {largest} bytes", start.elapsed());
}

#[test]
fn claimed_sizes_are_refused_before_allocating() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let models = Models::new().expect("fuzz models");
    let huge = [
        // v2 JSON: shapes that need 4e12 and overflowing element counts, one value given.
        &b"\x00{\"inputs\":[{\"name\":\"input\",\"shape\":[1000000000000,4],\"datatype\":\"FP32\",\"data\":[1]}]}"[..],
        b"\x00{\"inputs\":[{\"name\":\"text\",\"shape\":[1000000000000],\"datatype\":\"BYTES\",\"data\":[\"a\"]}]}",
        b"\x00{\"inputs\":[{\"name\":\"input\",\"shape\":[9223372036854775807,9223372036854775807],\"datatype\":\"FP32\",\"data\":[]}]}",
        // v2 binary: a binary_data_size far past the body.
        b"\x01\x55\x00{\"inputs\":[{\"name\":\"input\",\"shape\":[1,4],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":4294967295}}]}",
        // v2 image input claiming 1e12 images.
        b"\x05{\"inputs\":[{\"name\":\"x\",\"shape\":[1000000000000],\"datatype\":\"BYTES\",\"data\":[\"aGk=\"]}]}",
    ];
    LARGEST.store(0, Ordering::Relaxed);
    for body in huge {
        decode_any(&models, body);
    }
    // The same through the public decoder, checking the refusal message.
    let e = kinfer_runtime::protocol::v2::decode(
        br#"{"inputs":[{"name":"input","shape":[1000000000000],"datatype":"FP32","data":[1]}]}"#,
        None,
        &models.tabular,
        kinfer_runtime::protocol::Limits { max_rows: 10 },
    )
    .expect_err("refused");
    assert!(e.message.contains("1000000000000"), "{}", e.message);
    // V1 rows for a large image model: the model's [N, 3, 1024, 1024] is no promise of the data.
    let mut big = models.image.clone();
    big.inputs[0].shape = vec![-1, 3, 1024, 1024];
    let rows = format!("{{\"instances\":[{}]}}", vec!["0"; 100].join(","));
    let limits = kinfer_runtime::protocol::Limits { max_rows: 1000 };
    assert!(kinfer_runtime::protocol::v1::decode(rows.as_bytes(), &big, limits).is_err());
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < 8 << 20, "a small request with a claimed shape of [1e12] allocated {largest} bytes");
}
