//! The table in `nft` syntax, for docs and `plan` output.

use super::element::{describe, Shape};
use super::ruleset::{table_comment, Skeleton};
use crate::desired::{NftElement, NftRuleset, NftSet, NFT_TABLE};

/// The proxy's table for `ruleset` in `nft` syntax: its comment (the
/// fingerprint), set declarations, chains and rules; no elements. `nft -f`
/// accepts it and sends the same messages `ensure_ruleset` does.
pub fn render_ruleset(ruleset: &NftRuleset) -> String {
    let skeleton = Skeleton::new(ruleset);
    let mut out = format!("table ip {NFT_TABLE} {{\n");
    out.push_str(&format!(
        "\tcomment \"{}\"\n",
        table_comment(skeleton.fingerprint())
    ));
    for set in NftSet::ALL {
        let shape = Shape::of(set);
        out.push_str(&format!("\tset {} {{\n", set.name()));
        out.push_str(&format!("\t\ttype {}\n", shape.nft_type()));
        if shape.is_interval() {
            out.push_str("\t\tflags interval\n");
        }
        out.push_str("\t}\n");
    }
    out.push_str(&skeleton.render_chains());
    out.push_str("}\n");
    out
}

/// `add element ip kube-ipvs-proxy SET { KEY }`, as `nft` reads it.
pub fn render_element(e: &NftElement) -> String {
    format!(
        "add element ip {NFT_TABLE} {} {{ {} }}",
        e.set.name(),
        describe(e)
    )
}
