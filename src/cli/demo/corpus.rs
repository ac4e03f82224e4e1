//! The demo's corpus: a deterministic text of Zipf-distributed words, cut into chunks
//! on line boundaries, and the direct (no muster) count the answer is checked against.

use crate::agent::builtin::count_words;
use anyhow::Context as _;
use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::Path;

/// Counts the words of the whole corpus in this process, without muster: the file is
/// cut on line boundaries into one piece per core, each counted with
/// [`count_words`] on its own thread, and the counts summed. Returns the counts, the
/// total and the number of threads.
pub(super) fn direct_count(path: &Path) -> anyhow::Result<(BTreeMap<String, u64>, u64, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let mut pieces = Vec::with_capacity(threads);
    let mut rest = text.as_str();
    for i in (1..=threads).rev() {
        let want = rest.len() / i;
        let cut = if i == 1 {
            rest.len()
        } else {
            rest.as_bytes()[want..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| want + p + 1)
        };
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    let counted: Vec<(BTreeMap<String, u64>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = pieces.iter().map(|p| s.spawn(|| count_words(p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut words = BTreeMap::new();
    let mut total = 0;
    for (w, t) in counted {
        total += t;
        for (k, v) in w {
            *words.entry(k).or_insert(0) += v;
        }
    }
    Ok((words, total, threads))
}

pub(super) fn read_chunk(path: &Path, offset: u64, len: u64) -> anyhow::Result<String> {
    use std::io::{Read as _, Seek as _};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    String::from_utf8(buf).context("the corpus is not UTF-8")
}

// ---------------------------------------------------------------------------
// The corpus generator.

/// SplitMix64: a small, fast, seeded generator (the corpus must not change when the
/// `rand` crate does).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The most common English words, ranked first so that the answer reads naturally.
const COMMON: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "that", "was", "for", "on", "are", "with",
    "as", "i", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word",
    "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up",
    "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if",
    "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her",
    "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go",
    "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back", "little",
    "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our", "under",
    "name", "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low",
    "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old",
    "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small",
    "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here",
    "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light",
    "kind", "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother",
    "world", "near", "build", "self", "earth", "father", "head", "stand", "own", "page", "should",
    "country", "found", "answer", "school", "grow", "study", "still", "learn", "plant", "cover",
    "food", "sun", "four", "between", "state", "keep", "eye", "never", "last", "let", "thought",
    "city", "tree", "cross", "farm", "hard", "start", "might", "story", "saw", "far", "sea",
    "draw", "left", "late", "run", "while", "press", "close", "night", "real", "life", "few",
    "north", "queue", "task", "node", "redis", "lease", "retry",
];

/// Words in the vocabulary.
const VOCABULARY: usize = 4_000;
/// Zipf exponent.
const ZIPF_S: f64 = 1.07;
/// Slots of the sampling table (a word's share of slots is its probability).
const TABLE_BITS: u32 = 20;

/// The vocabulary: [`COMMON`] first, then made-up words from syllables.
fn vocabulary(rng: &mut SplitMix64) -> Vec<String> {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
        "br", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr", "ch",
    ];
    const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"];
    const CODAS: &[&str] = &["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"];
    let mut words: Vec<String> = COMMON.iter().map(|w| (*w).to_string()).collect();
    let mut seen: HashSet<String> = words.iter().cloned().collect();
    while words.len() < VOCABULARY {
        let syllables = 1 + rng.below(4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len() as u64) as usize]);
            w.push_str(NUCLEI[rng.below(NUCLEI.len() as u64) as usize]);
            w.push_str(CODAS[rng.below(CODAS.len() as u64) as usize]);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// A table of word indexes in which word `r` fills a share of the slots proportional
/// to `1 / (r + 1)^s`: a uniform slot is a Zipf-distributed word.
fn zipf_table(n: usize) -> Vec<u16> {
    let weights: Vec<f64> = (0..n)
        .map(|r| 1.0 / ((r + 1) as f64).powf(ZIPF_S))
        .collect();
    let sum: f64 = weights.iter().sum();
    let slots = 1usize << TABLE_BITS;
    let mut table = Vec::with_capacity(slots);
    let mut cum = 0.0;
    for (r, w) in weights.iter().enumerate() {
        cum += w / sum;
        let end = if r + 1 == n {
            slots
        } else {
            ((cum * slots as f64).round() as usize).min(slots)
        };
        // Every word gets at least one slot.
        let end = end.max(table.len() + 1).min(slots);
        table.resize(end, r as u16);
    }
    table
}

/// Writes about `size` bytes of text to `path`: lines of words drawn from a Zipf
/// distribution, in sentences (capitalised, with commas and full stops). Returns the
/// chunks as (offset, len), each ending on a line boundary, of about `chunk` bytes.
pub(super) fn generate_corpus(
    path: &Path,
    size: u64,
    seed: u64,
    chunk: u64,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut rng = SplitMix64(seed);
    let vocab = vocabulary(&mut rng);
    let table = zipf_table(vocab.len());
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut chunks = Vec::new();
    let (mut written, mut chunk_start) = (0u64, 0u64);
    let mut line = String::with_capacity(128);
    let mut sentence_left = 0u64;
    while written < size {
        line.clear();
        let width = 50 + rng.below(40) as usize;
        while line.len() < width {
            if !line.is_empty() {
                line.push(' ');
            }
            let word = &vocab[table[(rng.next_u64() >> (64 - TABLE_BITS)) as usize] as usize];
            if sentence_left == 0 {
                sentence_left = 4 + rng.below(14);
                let mut cs = word.chars();
                if let Some(first) = cs.next() {
                    line.extend(first.to_uppercase());
                    line.push_str(cs.as_str());
                }
            } else {
                line.push_str(word);
            }
            sentence_left -= 1;
            if sentence_left == 0 {
                line.push(match rng.below(10) {
                    0 => '?',
                    1 => '!',
                    _ => '.',
                });
            } else if rng.below(12) == 0 {
                line.push(',');
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        if written - chunk_start >= chunk {
            chunks.push((chunk_start, written - chunk_start));
            chunk_start = written;
        }
    }
    if written > chunk_start {
        chunks.push((chunk_start, written - chunk_start));
    }
    out.flush()?;
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_chunks_end_on_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        let ca = generate_corpus(&a, 300_000, 7, 16 * 1024).expect("corpus");
        let cb = generate_corpus(&b, 300_000, 7, 16 * 1024).expect("corpus");
        assert_eq!(ca, cb);
        let text = std::fs::read(&a).expect("read");
        assert_eq!(text, std::fs::read(&b).expect("read"));
        assert!(text.len() >= 300_000);
        let mut next = 0;
        for &(off, len) in &ca {
            assert_eq!(off, next);
            assert_eq!(text[(off + len - 1) as usize], b'\n');
            next = off + len;
        }
        assert_eq!(next, text.len() as u64);
        // Zipf-like: "the" is the most frequent word, far ahead of the 100th.
        let (words, total) = count_words(std::str::from_utf8(&text).expect("utf-8"));
        let the = words["the"];
        assert!(words.values().all(|&c| c <= the));
        assert!(the * 10 > total, "the: {the} of {total}");
    }

    #[test]
    fn zipf_table_gives_every_word_a_slot() {
        let t = zipf_table(VOCABULARY);
        assert_eq!(t.len(), 1 << TABLE_BITS);
        let distinct: HashSet<u16> = t.iter().copied().collect();
        assert_eq!(distinct.len(), VOCABULARY);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn direct_count_matches_count_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("c.txt");
        generate_corpus(&p, 200_000, 3, 8 * 1024).expect("corpus");
        let (words, total, _) = direct_count(&p).expect("count");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!((words, total), count_words(&text));
    }
}
