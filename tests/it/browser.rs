//! The HTML report in a real browser: headless Chromium loads a report of two cleared feeder
//! intervals from disk, runs its script and draws it. The DOM it dumps has the feeder (a node
//! per bus, a line per branch, the control and the caption the script filled in), and its
//! screenshot is a picture, not a blank page: many colours, the node colours among them.
//!
//! Needs `chromium` (Debian's package; `.ci/setup` installs it as root). Without it the test
//! says so loudly and passes, unless `BATON_REQUIRE_CHROMIUM=1` (CI), where it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ok;

/// Where Debian's package puts the browser; `BATON_CHROMIUM` overrides.
const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
/// Window of the screenshot, pixels.
const WINDOW: &str = "1280,2400";
/// Fewest distinct colours a drawn report has (text antialiasing, the heat map, the feeder).
const SCREENSHOT_COLOURS_MIN: usize = 64;
/// A pixel is coloured (not white, grey or black) when its channels differ by this much in all
/// (the heat map's pale yellow, #ffffbf, differs by 128).
const SATURATION_MIN: i16 = 100;
/// Fewest coloured pixels: the heat map's 66 cells of 44 × 16 alone are ~46,000.
const SATURATED_PIXELS_MIN: usize = 5_000;

fn chromium_or_skip() -> Option<PathBuf> {
    let path = std::env::var("BATON_CHROMIUM").unwrap_or_else(|_| CHROMIUM_DEFAULT.into());
    let probe = Command::new(&path).arg("--version").output();
    let problem = match probe {
        Ok(o) if o.status.success() => return Some(PathBuf::from(path)),
        Ok(o) => format!(
            "{path} --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{path} cannot run: {e}"),
    };
    let how = "install it with `apt-get install -y chromium` (or run .ci/setup as root)";
    if std::env::var("BATON_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!("BATON_REQUIRE_CHROMIUM=1 but {problem}; {how}");
    }
    eprintln!(
        "\n*** SKIPPED the browser test of the HTML report: {problem}; {how} ***\n\
         *** (BATON_REQUIRE_CHROMIUM=1 makes this a failure) ***\n"
    );
    None
}

fn headless(chromium: &Path, profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("runs chromium")
}

#[test]
fn the_report_is_drawn_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    ok(&["keys", "generate", "--out", keys.to_str().unwrap()]);
    let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let scenario = support::scenario_path("ieee33-feeder.toml");
    for t in [support::T0, support::T0 + 300] {
        ok(&[
            "clear",
            scenario.to_str().unwrap(),
            "--ledger",
            &db,
            "--operator-key",
            keys.join("operator.key").to_str().unwrap(),
            "--interval-start",
            &t.to_string(),
            "--out",
            dir.path().join("result.json").to_str().unwrap(),
        ]);
    }
    let html = dir.path().join("report.html");
    ok(&["report", "--db", &db, "--html", html.to_str().unwrap()]);
    let url = format!("file://{}", html.display());
    let profile = dir.path().join("profile");

    let dom = headless(&chromium, &profile, &["--dump-dom", &url]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<svg") && dom.contains("id=\"feeder\""),
        "{dom}"
    );
    let feeder = &dom[dom.find("id=\"feeder\"").unwrap()..];
    let feeder = &feeder[..feeder.find("</svg>").unwrap()];
    assert_eq!(feeder.matches("<circle").count(), 33, "a node per bus");
    assert_eq!(feeder.matches("<path").count(), 32, "a line per branch");
    // The script ran: it marked the interval it drew and wrote the caption.
    assert!(feeder.contains("data-interval=\"1\""), "{feeder}");
    assert!(dom.contains("id=\"feeder-step\""));
    let caption = &dom[dom.find("id=\"feeder-caption\">").unwrap()..];
    assert!(caption.contains("UTC: prices"), "{caption}");

    let png = dir.path().join("shot.png");
    let shot = headless(
        &chromium,
        &profile,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={WINDOW}"),
            &url,
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let image = png::decode(&std::fs::read(&png).unwrap());
    let colours: BTreeSet<[u8; 3]> = image.pixels.iter().copied().collect();
    assert!(
        colours.len() >= SCREENSHOT_COLOURS_MIN,
        "{} colours in a {}×{} screenshot",
        colours.len(),
        image.width,
        image.height
    );
    // Colour, not only text: the heat map's and the feeder's price colours.
    let saturated = image
        .pixels
        .iter()
        .filter(|p| {
            let (r, g, b) = (i16::from(p[0]), i16::from(p[1]), i16::from(p[2]));
            (r - g).abs() + (g - b).abs() + (b - r).abs() > SATURATION_MIN
        })
        .count();
    assert!(
        saturated > SATURATED_PIXELS_MIN,
        "{saturated} coloured pixels: the price colours are not drawn"
    );
}

/// Just enough PNG to read a browser's screenshot: 8-bit RGB or RGBA, not interlaced, with a
/// zlib stream inflated by a small RFC 1951 decoder.
mod png {
    pub(super) struct Image {
        pub(super) width: usize,
        pub(super) height: usize,
        pub(super) pixels: Vec<[u8; 3]>,
    }

    pub(super) fn decode(bytes: &[u8]) -> Image {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let (mut at, mut idat) = (8, Vec::new());
        let (mut width, mut height, mut channels) = (0, 0, 0);
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = &bytes[at + 4..at + 8];
            let data = &bytes[at + 8..at + 8 + len];
            match kind {
                b"IHDR" => {
                    width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                    height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                    assert_eq!(data[8], 8, "8-bit");
                    channels = match data[9] {
                        2 => 3,
                        6 => 4,
                        c => panic!("colour type {c}"),
                    };
                    assert_eq!(data[12], 0, "not interlaced");
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            at += 12 + len;
        }
        let raw = inflate(&idat[2..]);
        let stride = width * channels;
        let mut prev = vec![0u8; stride];
        let mut pixels = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
            let mut cur = row[1..].to_vec();
            for i in 0..stride {
                let a = if i >= channels { cur[i - channels] } else { 0 };
                let b = prev[i];
                let c = if i >= channels { prev[i - channels] } else { 0 };
                let add = match row[0] {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                    4 => {
                        let p = i16::from(a) + i16::from(b) - i16::from(c);
                        let (pa, pb, pc) = (
                            (p - i16::from(a)).abs(),
                            (p - i16::from(b)).abs(),
                            (p - i16::from(c)).abs(),
                        );
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("filter {f}"),
                };
                cur[i] = cur[i].wrapping_add(add);
            }
            for px in cur.chunks(channels) {
                pixels.push([px[0], px[1], px[2]]);
            }
            prev = cur;
        }
        Image {
            width,
            height,
            pixels,
        }
    }

    struct Bits<'a> {
        data: &'a [u8],
        at: usize,
        bit: u32,
    }

    impl Bits<'_> {
        fn get(&mut self, n: u32) -> u32 {
            let mut v = 0;
            for i in 0..n {
                let b = (self.data[self.at] >> self.bit) & 1;
                v |= u32::from(b) << i;
                self.bit += 1;
                if self.bit == 8 {
                    self.bit = 0;
                    self.at += 1;
                }
            }
            v
        }
    }

    /// A canonical Huffman code: (counts per length, symbols by code).
    struct Huffman {
        counts: [u16; 16],
        symbols: Vec<u16>,
    }

    impl Huffman {
        fn new(lengths: &[u8]) -> Huffman {
            let mut counts = [0u16; 16];
            for &l in lengths {
                counts[l as usize] += 1;
            }
            counts[0] = 0;
            let mut offs = [0u16; 16];
            for i in 1..16 {
                offs[i] = offs[i - 1] + counts[i - 1];
            }
            let mut symbols = vec![0u16; lengths.len()];
            for (s, &l) in lengths.iter().enumerate() {
                if l != 0 {
                    symbols[offs[l as usize] as usize] = s as u16;
                    offs[l as usize] += 1;
                }
            }
            Huffman { counts, symbols }
        }

        fn decode(&self, bits: &mut Bits) -> u16 {
            let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
            for len in 1..16 {
                code |= bits.get(1) as i32;
                let count = i32::from(self.counts[len]);
                if code - count < first {
                    return self.symbols[(index + (code - first)) as usize];
                }
                index += count;
                first += count;
                first <<= 1;
                code <<= 1;
            }
            panic!("bad Huffman code");
        }
    }

    const LEN_BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const LEN_EXTRA: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    const DIST_BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DIST_EXTRA: [u8; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];

    pub(super) fn inflate(data: &[u8]) -> Vec<u8> {
        let mut bits = Bits {
            data,
            at: 0,
            bit: 0,
        };
        let mut out = Vec::new();
        loop {
            let last = bits.get(1);
            match bits.get(2) {
                0 => {
                    if bits.bit != 0 {
                        bits.bit = 0;
                        bits.at += 1;
                    }
                    let len = u16::from_le_bytes([data[bits.at], data[bits.at + 1]]) as usize;
                    bits.at += 4;
                    out.extend_from_slice(&data[bits.at..bits.at + len]);
                    bits.at += len;
                }
                kind @ (1 | 2) => {
                    let (lit, dist) = if kind == 1 {
                        let mut l = [8u8; 288];
                        l[144..256].fill(9);
                        l[256..280].fill(7);
                        (Huffman::new(&l), Huffman::new(&[5u8; 30]))
                    } else {
                        dynamic(&mut bits)
                    };
                    loop {
                        let sym = lit.decode(&mut bits);
                        if sym < 256 {
                            out.push(sym as u8);
                        } else if sym == 256 {
                            break;
                        } else {
                            let i = usize::from(sym - 257);
                            let len = usize::from(LEN_BASE[i])
                                + bits.get(u32::from(LEN_EXTRA[i])) as usize;
                            let d = usize::from(dist.decode(&mut bits));
                            let back = usize::from(DIST_BASE[d])
                                + bits.get(u32::from(DIST_EXTRA[d])) as usize;
                            let start = out.len() - back;
                            for k in 0..len {
                                out.push(out[start + k]);
                            }
                        }
                    }
                }
                _ => panic!("reserved block type"),
            }
            if last == 1 {
                return out;
            }
        }
    }

    fn dynamic(bits: &mut Bits) -> (Huffman, Huffman) {
        let hlit = bits.get(5) as usize + 257;
        let hdist = bits.get(5) as usize + 1;
        let hclen = bits.get(4) as usize + 4;
        const ORDER: [usize; 19] = [
            16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
        ];
        let mut cl = [0u8; 19];
        for &o in ORDER.iter().take(hclen) {
            cl[o] = bits.get(3) as u8;
        }
        let code = Huffman::new(&cl);
        let mut lengths = Vec::with_capacity(hlit + hdist);
        while lengths.len() < hlit + hdist {
            match code.decode(bits) {
                s @ 0..=15 => lengths.push(s as u8),
                16 => {
                    let prev = *lengths.last().expect("a length to repeat");
                    for _ in 0..3 + bits.get(2) {
                        lengths.push(prev);
                    }
                }
                17 => lengths.extend(std::iter::repeat_n(0, 3 + bits.get(3) as usize)),
                _ => lengths.extend(std::iter::repeat_n(0, 11 + bits.get(7) as usize)),
            }
        }
        (
            Huffman::new(&lengths[..hlit]),
            Huffman::new(&lengths[hlit..]),
        )
    }

    #[test]
    fn inflates_stored_and_fixed_blocks() {
        // Raw deflate of b"abc" at level 0 (a stored block) and of b"aaaaaaaaaa" at level 9
        // (fixed Huffman codes), as Python's zlib writes them.
        assert_eq!(
            inflate(&[0x01, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c']),
            b"abc"
        );
        assert_eq!(inflate(&[0x4b, 0x4c, 0x84, 0x01, 0x00]), b"aaaaaaaaaa");
    }
}
