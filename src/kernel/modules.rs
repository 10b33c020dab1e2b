//! Loading the kernel modules IPVS mode needs, without shelling out to
//! modprobe: modules.dep names each module's file and dependencies, and
//! finit_module(2) loads them, dependencies first.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::kmod::{finit_module, ModuleInitFlags};

/// `MODULE_INIT_COMPRESSED_FILE` from linux/module.h: the kernel decompresses
/// .ko.xz/.ko.zst itself (5.17+ with CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Why a module could not be loaded. Each variant names the module.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {module} is not loaded and {dep_file} has no entry for it; load it on the host (modprobe {module}) or mount /lib/modules into the proxy's pod")]
    Unknown { module: String, dep_file: PathBuf },
    #[error("kernel module {module} is not loaded and {dep_file} cannot be read: {source}; load it on the host (modprobe {module}) or mount /lib/modules into the proxy's pod")]
    NoDepFile {
        module: String,
        dep_file: PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel module {module} from {path}: {source}")]
    Load {
        module: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads `modules` (and what they depend on) unless already present.
/// Returns the modules this call loaded.
pub fn ensure_modules(modules: &[&str]) -> Result<Vec<String>, ModuleError> {
    let mut loader = Loader {
        dir: modules_dir(),
        deps: None,
        loaded: Vec::new(),
    };
    for module in modules {
        loader.ensure(&canonical(module))?;
    }
    Ok(loader.loaded)
}

/// The IPVS schedulers a kernel can offer, by name.
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos",
];

/// The schedulers this kernel offers: loaded, built in, or installed as a
/// module. `None` when that cannot be known (no modules.dep), so callers do
/// not reject what might work.
pub fn available_schedulers() -> Option<Vec<&'static str>> {
    let dir = modules_dir();
    let dep = std::fs::read_to_string(dir.join("modules.dep")).ok()?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    Some(schedulers_in(&dep, &builtin, is_present))
}

/// The schedulers among modules.dep's and modules.builtin's entries, or
/// `present` (loaded).
fn schedulers_in(dep: &str, builtin: &str, present: impl Fn(&str) -> bool) -> Vec<&'static str> {
    // Only IPVS's modules are looked up: the rest of a distribution's
    // thousands are skipped before anything is allocated for them.
    let names: std::collections::HashSet<String> = dep
        .lines()
        .filter_map(|line| line.split_once(':').map(|(file, _)| file))
        .chain(builtin.lines())
        .filter(|file| file.contains("ip_vs_") || file.contains("ip-vs-"))
        .map(module_name)
        .collect();
    SCHEDULERS
        .iter()
        .copied()
        .filter(|s| {
            let module = format!("ip_vs_{s}");
            names.contains(&module) || present(&module)
        })
        .collect()
}

fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Module names use `_` in /sys/module, while files may use `-`.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn is_present(module: &str) -> bool {
    Path::new("/sys/module").join(module).exists()
}

struct Loader {
    dir: PathBuf,
    /// module name -> (file relative to dir, dependencies in modules.dep order)
    deps: Option<HashMap<String, (String, Vec<String>)>>,
    loaded: Vec<String>,
}

impl Loader {
    fn ensure(&mut self, module: &str) -> Result<(), ModuleError> {
        if is_present(module) || self.is_builtin(module) {
            return Ok(());
        }
        let dep_file = self.dir.join("modules.dep");
        if self.deps.is_none() {
            let text =
                std::fs::read_to_string(&dep_file).map_err(|source| ModuleError::NoDepFile {
                    module: module.to_owned(),
                    dep_file: dep_file.clone(),
                    source,
                })?;
            self.deps = Some(parse_modules_dep(&text));
        }
        let Some((file, deps)) = self.deps.as_ref().and_then(|d| d.get(module)).cloned() else {
            return Err(ModuleError::Unknown {
                module: module.to_owned(),
                dep_file,
            });
        };
        // modules.dep lists the whole closure; the last entry loads first.
        for dep in deps.iter().rev() {
            let name = module_name(dep);
            if !is_present(&name) {
                self.load(&name, dep)?;
            }
        }
        self.load(module, &file)
    }

    fn load(&mut self, module: &str, file: &str) -> Result<(), ModuleError> {
        let path = self.dir.join(file);
        let err = |source: std::io::Error| ModuleError::Load {
            module: module.to_owned(),
            path: path.clone(),
            source,
        };
        let fd = File::open(&path).map_err(err)?;
        let flags = if file.ends_with(".ko") {
            ModuleInitFlags::empty()
        } else {
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        };
        match finit_module(&fd, c"", flags) {
            Ok(()) => {
                tracing::info!(module, "loaded kernel module");
                self.loaded.push(module.to_owned());
                Ok(())
            }
            Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(errno) => Err(err(std::io::Error::from(errno))),
        }
    }

    fn is_builtin(&self, module: &str) -> bool {
        std::fs::read_to_string(self.dir.join("modules.builtin"))
            .map(|text| text.lines().any(|line| module_name(line) == module))
            .unwrap_or(false)
    }
}

/// `kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz` -> `ip_vs_rr`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    canonical(stem)
}

fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (file, deps) = line.split_once(':')?;
            let file = file.trim();
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(file), (file.to_owned(), deps)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_lines_map_names_to_files_and_dependencies() {
        let text = "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/lib/libcrc32c.ko.xz\n\
                    kernel/drivers/net/dummy.ko:\n\
                    garbage line without colon\n";
        let deps = parse_modules_dep(text);
        assert_eq!(deps.len(), 2);
        let (file, list) = &deps["ip_vs"];
        assert_eq!(file, "kernel/net/netfilter/ipvs/ip_vs.ko.xz");
        assert_eq!(
            list.iter().map(|d| module_name(d)).collect::<Vec<_>>(),
            ["nf_conntrack", "nf_defrag_ipv6", "libcrc32c"]
        );
        assert_eq!(
            deps["dummy"],
            ("kernel/drivers/net/dummy.ko".to_owned(), vec![])
        );
    }

    #[test]
    fn schedulers_are_found_installed_built_in_or_loaded() {
        let dep = "kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n\
                   kernel/net/netfilter/ipvs/ip_vs_wlc.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n\
                   kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n\
                   kernel/drivers/net/dummy.ko.xz:\n\
                   kernel/net/sched/sch_sfq.ko.xz:\n";
        let builtin = "kernel/net/netfilter/ipvs/ip-vs-sh.ko\nkernel/fs/ext4/ext4.ko\n";
        let loaded = |module: &str| module == "ip_vs_mh";
        assert_eq!(
            schedulers_in(dep, builtin, loaded),
            ["rr", "wlc", "sh", "mh"]
        );
        assert_eq!(schedulers_in("", "", |_| false), Vec::<&str>::new());
    }

    #[test]
    fn module_names_are_canonical() {
        let cases = [
            ("kernel/net/netfilter/ipvs/ip_vs_rr.ko", "ip_vs_rr"),
            ("kernel/foo/nf-nat.ko.zst", "nf_nat"),
            ("ip_vs", "ip_vs"),
        ];
        for (path, name) in cases {
            assert_eq!(module_name(path), name, "{path}");
        }
    }
}
