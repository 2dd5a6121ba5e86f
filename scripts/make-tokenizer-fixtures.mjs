#!/usr/bin/env node
// Makes tests/tokenizer/fixtures/gpt2_cases.json: hard strings and the GPT-2
// ids a widely used reference gives them, so tests/tokenizer needs no network.
//
//   node scripts/make-tokenizer-fixtures.mjs
//
// Reference: npm `tiktoken` (OpenAI's Rust tokenizer built to WebAssembly),
// get_encoding("gpt2"), encode(text, [], []): no special tokens, so a literal
// "<|endoftext|>" is plain text, as geopipe encodes it. `gpt-3-encoder` (a JS
// port of OpenAI's encoder.py) is a second opinion: cases where it disagrees
// are printed, not written. Both are installed, pinned, into a temp folder
// from the npm registry (the only step that needs the network). The script
// also checks that assets/tokenizers/gpt2/ holds the vocabulary the reference
// uses (the files gpt-3-encoder ships: OpenAI's encoder.json and vocab.bpe).
//
// Strings must be valid Unicode (a JS string cannot hold invalid UTF-8); the
// invalid-byte behaviour is tested in tests/tokenizer without a reference.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const kPackages = ["tiktoken@1.0.22", "gpt-3-encoder@1.1.4"];

const modules = mkdtempSync(join(tmpdir(), "geopipe-tokref-"));
execFileSync("npm", ["install", "--no-audit", "--no-fund", "--prefix", modules, ...kPackages],
             { stdio: "inherit" });
const require = createRequire(join(modules, "node_modules") + "/");
const { get_encoding } = require("tiktoken");
const gpt3 = require("gpt-3-encoder");

// The shipped vocabulary must be the one the reference encodes with.
const sha = (p) => createHash("sha256").update(readFileSync(p)).digest("hex");
const pkg = join(modules, "node_modules", "gpt-3-encoder");
for (const [ours, theirs] of [["vocab.json", "encoder.json"], ["merges.txt", "vocab.bpe"]]) {
  const a = sha(join(root, "assets/tokenizers/gpt2", ours));
  const b = sha(join(pkg, theirs));
  if (a !== b) {
    throw new Error(`assets/tokenizers/gpt2/${ours} (${a}) differs from gpt-3-encoder's ` +
                    `${theirs} (${b}); copy it from ${pkg}`);
  }
}

const prose =
  "The quick brown fox jumps over the lazy dog. It wasn't the first time; " +
  "the dog, who'd seen 3,141 foxes since 1999, didn't care.\n\n" +
  "    Indented paragraph with  two spaces, a tab\there, and trailing spaces   \n";

const cases = [
  ["empty", ""],
  ["hello", "Hello world"],
  ["prose", prose],
  // whitespace runs
  ["double_space", "hello  world"],
  ["leading_spaces", "   leading"],
  ["trailing_spaces", "trailing   "],
  ["only_spaces", "     "],
  ["tabs_newlines", "tabs\t\tand\nnewlines\n\n\nend"],
  ["crlf", "line one\r\nline two\r\n"],
  ["mixed_ws", "a \t \n b\n \n\tc"],
  ["newline_run", "x" + "\n".repeat(7) + "y"],
  ["ws_before_word", "a  \tb"],
  ["unicode_spaces", "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g"],
  // a space next to a non-ASCII space: \s must be Unicode-aware (PCRE2_UCP)
  ["unicode_space_runs", "x \u00a0y a\u2003 b c \u3000\u3000 d\u00a0\u00a0e \u2028\n f"],
  ["vt_ff", "a\u000bb\u000cc"],
  ["separators_1c_1f", "a\u001cb\u001dc\u001ed\u001ff"],
  ["mongolian_vowel_sep", "a\u180eb x \u180ea \u180e\u180e"],
  ["zero_width", "zero\u200bwidth\u200cjoin\u200dnon\ufeffbom"],
  // contractions
  ["contractions", "I'm sure we're fine, they've said I'll go and he'd know it's done; can't won't"],
  ["contractions_upper", "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D"],
  ["contractions_odd", "'s 't 're 've 'm 'll 'd ''s rock 'n' roll l'amour o'clock"],
  ["curly_apostrophe", "it\u2019s can\u2019t"],
  // digits
  ["digits", "1234567890"],
  ["numbers", "pi is 3.14159, e is 2.71828; 1,000,000 users in 2024 (+7%)"],
  ["digit_run", "9".repeat(200)],
  ["other_numerals", "\u0663\u0664\u0665 \u2160\u216b \u00bd \u00b2 \u2460"],
  // unicode
  ["accents", "na\u00efve caf\u00e9 \u00dcn\u00efc\u00f6d\u00e9 \u00c5ngstr\u00f6m"],
  ["combining", "e\u0301 a\u0308 n\u0303"],
  ["cjk", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587\u6d4b\u8bd5 \ud55c\uad6d\uc5b4"],
  ["hebrew_rtl", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd"],
  ["arabic_rtl", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645"],
  ["bidi_marks", "abc\u200fdef\u202eghi\u202c"],
  ["greek_cyrillic", "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439"],
  ["math_letters", "\u210c\ud835\udd22\ud835\udd29\ud835\udd29\ud835\udd2c"],
  ["devanagari", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e"],
  ["thai", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a"],
  ["nul_and_controls", "a\u0000b\u0001c\u007fd"],
  ["private_use", "\ue000\uf8ff"],
  // emoji
  ["emoji", "I \u2764\ufe0f tokens \ud83d\udc4d\ud83d\ude00"],
  ["emoji_zwj_family", "\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67\u200d\ud83d\udc66 family"],
  ["emoji_flags", "\ud83c\uddef\ud83c\uddf5\ud83c\uddfa\ud83c\uddf8 \ud83c\udff3\ufe0f\u200d\ud83c\udf08"],
  ["emoji_skin_keycap", "\ud83d\udc4b\ud83c\udffd 1\ufe0f\u20e3 #\ufe0f\u20e3"],
  ["emoji_run", "\ud83d\ude80".repeat(50)],
  // code
  ["python", "def f(x):\n    if x != 0:\n        return x ** 2  # square\n    return None\n"],
  ["cpp", "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v[0] >= 1 ? 0 : -1;\n}\n"],
  ["json", "{\"key\": [1, 2.5, null], \"nested\": {\"a\": \"b\"}}"],
  ["identifiers", "snake_case_name camelCaseName SCREAMING_CASE __dunder__ foo.bar()"],
  ["url_email", "https://example.com/path?q=1&r=two#frag user@example.org"],
  ["punct_runs", "!!! ??? ... --- === *** ~~~ ,,, ;;; ::"],
  ["html", "<div class=\"x\">Hello &amp; welcome</div>"],
  // special-token text is plain text
  ["endoftext_alone", "<|endoftext|>"],
  ["endoftext_inside", "Hello<|endoftext|>World <|endoftext|> again"],
  ["fim_tokens", "<|fim_prefix|><|fim_middle|><|fim_suffix|>"],
  // very long words (> 1000 bytes in one pre-token)
  ["long_a", "a".repeat(1500)],
  ["long_abc", "abc".repeat(500)],
  ["long_word_mixed", "Supercalifragilisticexpialidocious".repeat(40)],
  ["long_spaces", " ".repeat(1200) + "x"],
  ["long_cjk", "\u6f22\u5b57".repeat(600)],
  ["long_punct", "-=".repeat(700)],
  ["long_digits", "1234567890".repeat(120)],
];

const enc = get_encoding("gpt2");
const out = [];
let disagreements = 0;
for (const [name, text] of cases) {
  const ids = Array.from(enc.encode(text, [], []));
  const back = new TextDecoder().decode(enc.decode(new Uint32Array(ids)));
  if (back !== text) throw new Error(`tiktoken does not round-trip case ${name}`);
  let other;
  try {
    other = gpt3.encode(text);
  } catch (e) {
    other = String(e);
  }
  if (JSON.stringify(other) !== JSON.stringify(ids)) {
    ++disagreements;
    console.log(`note: gpt-3-encoder disagrees with tiktoken on '${name}'`);
  }
  out.push({ name, text, ids });
}
enc.free();

const file = join(root, "tests/tokenizer/fixtures/gpt2_cases.json");
const body = {
  reference: `npm ${kPackages[0]}: get_encoding("gpt2").encode(text, [], [])`,
  vocabulary: "assets/tokenizers/gpt2 (OpenAI's GPT-2 encoder.json and vocab.bpe)",
  cases: out,
};
// One case per line keeps the file small and its diffs readable.
const lines = out.map((c) => "  " + JSON.stringify(c));
writeFileSync(file, `{"reference": ${JSON.stringify(body.reference)},\n` +
                    ` "vocabulary": ${JSON.stringify(body.vocabulary)},\n` +
                    ` "cases": [\n${lines.join(",\n")}\n]}\n`);
console.log(`wrote ${out.length} cases to ${file} (${disagreements} where gpt-3-encoder differs)`);
