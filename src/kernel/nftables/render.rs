//! The tables in `nft` syntax, for docs and `plan` output.

use super::element::{describe, Shape};
use super::ruleset::{table_comment, Skeleton};
use crate::desired::{NftElement, NftFamily, NftRuleset, NftSet, NFT_TABLE};

/// The proxy's tables for `ruleset` in `nft` syntax, `ip` then (when the
/// ruleset has it) `ip6`: each with its comment (the fingerprint), set
/// declarations, chains and rules; no elements. `nft -f` accepts it and
/// sends the same messages `ensure_ruleset` does.
pub fn render_ruleset(ruleset: &NftRuleset) -> String {
    let tables: Vec<String> = ruleset
        .families()
        .map(|family| render_table(ruleset, family))
        .collect();
    tables.join("")
}

/// One table of `ruleset`, as [`render_ruleset`] prints it.
pub(super) fn render_table(ruleset: &NftRuleset, family: NftFamily) -> String {
    let skeleton = Skeleton::new(ruleset, family);
    let mut out = format!("table {family} {NFT_TABLE} {{\n");
    out.push_str(&format!(
        "\tcomment \"{}\"\n",
        table_comment(skeleton.fingerprint())
    ));
    for set in NftSet::ALL {
        let shape = Shape::of(set);
        out.push_str(&format!("\tset {} {{\n", set.name()));
        out.push_str(&format!("\t\ttype {}\n", shape.nft_type(family)));
        if shape.is_interval() {
            out.push_str("\t\tflags interval\n");
        }
        out.push_str("\t}\n");
    }
    out.push_str(&skeleton.render_chains());
    out.push_str("}\n");
    out
}

/// `add element FAMILY kube-ipvs-proxy SET { KEY }`, as `nft` reads it.
pub fn render_element(e: &NftElement) -> String {
    format!(
        "add element {} {NFT_TABLE} {} {{ {} }}",
        e.family(),
        e.set.name(),
        describe(e)
    )
}
