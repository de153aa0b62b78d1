//! Tokenizers built from slow-tokenizer files (issue 42) against `transformers` 4.57:
//! SentencePiece models trained on GLUE sentences (DeBERTa-v3 layout, unigram with and without
//! byte fallback, lowercased with punctuation split; XLM-R unigram and BPE; CamemBERT) and
//! RoBERTa's vocab.json with merges.txt, each converted by transformers
//! (`bench/golden/spm.py`, goldens in `tests/fixtures/spm/`). Every id of every single sentence
//! and pair must be transformers' own; on GLUE sentences the ids must also be sentencepiece's,
//! shifted as the family's converter shifts them.
mod common;

use std::path::{Path, PathBuf};

use clsnorm::tokenize::TextTokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
}

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn converted_tokenizers_give_transformers_ids_for_singles_and_pairs() {
    let g = golden();
    let texts: Vec<String> = serde_json::from_value(g["texts"].clone()).unwrap();
    let models = g["models"].as_object().unwrap();
    assert_eq!(models.len(), 6);
    for (name, m) in models {
        let tok = TextTokenizer::load(&fixtures().join(name), 4096)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (singles, pairs) = (ids(&m["singles"]), ids(&m["pairs"]));
        let types: Vec<Option<Vec<i64>>> = serde_json::from_value(m["pair_types"].clone()).unwrap();
        for (i, t) in texts.iter().enumerate() {
            let got = tok.encode(t, None).unwrap();
            assert_eq!(got.input_ids, singles[i], "{name}: single {i} {t:?}");
            let b = &texts[texts.len() - 1 - i];
            // transformers' Python call takes an empty second text for no pair at all.
            if b.is_empty() {
                continue;
            }
            let got = tok.encode(t, Some(b)).unwrap();
            assert_eq!(got.input_ids, pairs[i], "{name}: pair {i} {t:?} / {b:?}");
            if let Some(types) = &types[i] {
                assert_eq!(&got.token_type_ids, types, "{name}: pair types {i}");
            }
        }
    }
}

/// Where the family's converter has no special rule, its ids are sentencepiece's: DeBERTa's
/// as they are, XLM-R's shifted by fairseq's offset of 1 (its first four ids are `<s> <pad>
/// </s> <unk>`), CamemBERT's by 4; checked on the GLUE sentences (the hostile texts meet the
/// converters' own normalizer rules, checked above against transformers).
#[test]
fn ids_are_sentencepieces_where_the_converter_keeps_them() {
    let g = golden();
    let texts: Vec<String> = serde_json::from_value(g["texts"].clone()).unwrap();
    for (name, shift) in [
        ("deberta-v3-unigram", 0),
        ("deberta-v3-bytes-lower", 0),
        ("xlm-roberta-unigram", 1),
        ("xlm-roberta-bpe", 1),
        ("camembert-unigram", 4),
    ] {
        let m = &g["models"][name];
        let sp = ids(&m["sentencepiece"]);
        let tok = TextTokenizer::load(&fixtures().join(name), 4096).unwrap();
        let mut compared = 0;
        for (i, t) in texts.iter().enumerate().take(40) {
            // The lowercased model's sentencepiece saw the text as written.
            if name.contains("lower") && t.chars().any(char::is_uppercase) {
                continue;
            }
            // Punctuation split apart is the DeBERTa converter's own rule.
            if name.contains("lower") && t.chars().any(|c| c.is_ascii_punctuation()) {
                continue;
            }
            let got = tok.encode(t, None).unwrap().input_ids;
            let want: Vec<i64> = sp[i].iter().map(|&x| x + shift).collect();
            assert_eq!(&got[1..got.len() - 1], &want[..], "{name}: {t:?}");
            compared += 1;
        }
        assert!(compared >= 5, "{name}: {compared}");
    }
}

/// A DeBERTa-v3 folder with only `spm.model` fine-tunes, evaluates and embeds through the
/// binary; its checkpoint carries the SentencePiece model and tokenizes the same.
#[test]
fn a_deberta_v3_folder_with_only_spm_model_fine_tunes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::deberta_v3_spm_dir(tmp.path());
    let data = tmp.path().join("d.csv");
    let mut csv = String::from("text,label\n");
    for i in 0..12 {
        csv.push_str(&format!(
            "the movie was {} and long,{}\n",
            if i % 2 == 0 { "good" } else { "bad" },
            i % 2
        ));
    }
    std::fs::write(&data, csv).unwrap();
    let out = tmp.path().join("run");
    common::ok(&common::clsnorm(&common::finetune_custom(
        &model, &data, &out,
    )));
    for f in ["spm.model", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(out.join("best").join(f)).unwrap(),
            std::fs::read(model.join(f)).unwrap(),
            "{f}"
        );
    }
    common::ok(&common::clsnorm(&[
        "evaluate",
        "--checkpoint",
        common::p(&out.join("best")),
    ]));
    let embed = |m: &Path| {
        let o = common::ok(&common::clsnorm(&[
            "embed",
            "--model",
            common::p(m),
            "the movie was good",
        ]));
        serde_json::from_str::<serde_json::Value>(&o).unwrap()["input_ids"].clone()
    };
    assert_eq!(embed(&model), embed(&out.join("best")));
}

/// Hostile SentencePiece files: an error naming the file and what is wrong, never a panic or
/// an allocation the file asks for.
#[test]
fn hostile_sentencepiece_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("deberta-v3-unigram/spm.model")).unwrap();
    let varint = |mut v: u64, out: &mut Vec<u8>| loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    // 2^20 + 1 pieces of one byte each, then a trainer spec: past the bound.
    let mut many = Vec::new();
    for _ in 0..(1 << 20) + 1 {
        many.extend_from_slice(&[0x0a, 3, 0x0a, 1, b'a']);
    }
    many.extend_from_slice(&[0x12, 0]);
    // A piece whose length runs past the end of the file.
    let mut beyond = vec![0x0a];
    varint(1 << 40, &mut beyond);
    // A NaN score: piece "a" with score NaN.
    let mut nan = vec![0x0a, 10, 0x0a, 1, b'a', 0x15];
    nan.extend_from_slice(&f32::NAN.to_le_bytes());
    nan.extend_from_slice(&[0x18, 1, 0x12, 0]);
    // A charsmap whose trie claims 2^28 bytes of a 12-byte blob; then one whose trie is a
    // single entry pointing past the normalized strings.
    let with_charsmap = |charsmap: &[u8]| {
        let mut b = Vec::new();
        for (piece, kind) in [("<unk>", 2u8), ("[CLS]", 3), ("[SEP]", 3), ("a", 1)] {
            b.extend_from_slice(&[0x0a, piece.len() as u8 + 4, 0x0a, piece.len() as u8]);
            b.extend_from_slice(piece.as_bytes());
            b.extend_from_slice(&[0x18, kind]);
        }
        b.extend_from_slice(&[0x12, 0]);
        let mut norm = vec![0x12];
        varint(charsmap.len() as u64, &mut norm);
        norm.extend_from_slice(charsmap);
        b.push(0x1a);
        varint(norm.len() as u64, &mut b);
        b.extend_from_slice(&norm);
        b
    };
    let mut huge_trie = (1u32 << 28).to_le_bytes().to_vec();
    huge_trie.extend_from_slice(&[0; 8]);
    let mut past_end = 4u32.to_le_bytes().to_vec();
    past_end.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    past_end.extend_from_slice(b"x\0");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "spm.model"),
        ("beyond", beyond, "only"),
        ("many", many, "more than 1048576 pieces"),
        ("nan", nan, "score NaN"),
        ("charsmap-size", with_charsmap(&huge_trie), "spm.model"),
        ("charsmap-offsets", with_charsmap(&past_end), "spm.model"),
        ("empty", Vec::new(), "no trainer_spec"),
    ];
    for (name, bytes, want) in cases {
        let dir = common::deberta_v3_spm_dir(&tmp.path().join(name));
        std::fs::write(dir.join("spm.model"), &bytes).unwrap();
        let o = common::clsnorm(&["embed", "--model", common::p(&dir), "a text"]);
        assert!(!o.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("{name}: {}", err.lines().last().unwrap_or_default());
        common::fails(&o, want);
        common::fails(&o, "spm.model");
    }
}

/// A RoBERTa folder whose vocab.json or merges.txt is not what RobertaTokenizer reads: an error
/// naming the file and the line.
#[test]
fn hostile_vocab_and_merges_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("roberta-vocab-merges");
    let cases: [(&str, &str, &[u8], &str); 4] = [
        (
            "list",
            "vocab.json",
            b"[1, 2]",
            "vocab.json is not a JSON object of ids",
        ),
        (
            "float",
            "vocab.json",
            b"{\"<s>\": 0.5}",
            "maps a token to something not an id",
        ),
        (
            "three",
            "merges.txt",
            b"#version: 0.2\na b c\n",
            "merges.txt:2: expected two tokens",
        ),
        (
            "binary",
            "merges.txt",
            b"#v\n\xff\xfe\n",
            "merges.txt is not UTF-8",
        ),
    ];
    for (name, file, bytes, want) in cases {
        let dir = common::family_model_dir(&tmp.path().join(name), "roberta", "small");
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join(file), bytes).unwrap();
        let o = common::clsnorm(&["embed", "--model", common::p(&dir), "a text"]);
        common::fails(&o, want);
    }
}
