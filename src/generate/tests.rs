//! Unit tests of `generate/mod.rs`.

use super::relaxed_rules;
use crate::poetry::forms::PoemForm;

#[test]
fn free_verse_reports_broken_rules_only_where_the_rules_held() {
    // 水 makes the first line 孤平; the rest keeps the template.
    let poem = "水長沙岸沙，人過遠城紗。一宿江湖裏，孤帆落日斜。";
    let free = PoemForm::Free;
    let all = relaxed_rules(poem, &free, 1);
    assert!(all.iter().any(|r| r.line == 1), "{all:?}");
    assert!(
        relaxed_rules(poem, &free, 2).is_empty(),
        "line 1 is free verse's own"
    );
    // Six characters in the first line: no regulated shape, never held.
    let ragged = "春日花爭處處，春風柳自陰。東窗無限意，猶得慰人心。";
    assert!(relaxed_rules(ragged, &free, 2).is_empty());
}

#[test]
fn a_ci_reports_the_rhymes_of_its_tune_it_broke() {
    // 晏殊's 浣溪沙 with line 5 ending in 紅 (第一部) among 灰 rhymes.
    let poem = "一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回？無可奈何花落去，似曾相識燕歸紅。小園香徑獨徘徊。";
    let form: PoemForm = "ci:浣溪沙".parse().unwrap();
    let relaxed = relaxed_rules(poem, &form, 1);
    assert_eq!(relaxed.len(), 1, "{relaxed:?}");
    assert_eq!((relaxed[0].line, relaxed[0].column), (5, 7));
    assert_eq!(relaxed[0].rule, "出韻");
}
