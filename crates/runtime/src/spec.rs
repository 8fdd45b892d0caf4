//! The OCI runtime spec of a container: the image's config merged with the `run` flags.

use crx_image::ImageConfig;
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, LinuxBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, MountBuilder, Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::error::SpecError;

/// The PATH a container gets when its image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on top of the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessOptions {
    /// Replaces the image's `Cmd` when not empty (the entrypoint stays).
    pub args: Vec<String>,
    /// `KEY=VALUE` (overrides the image's KEY) or `KEY` (taken from `host_env`).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub terminal: bool,
}

/// The command line: entrypoint, then the user's args or else the image's cmd.
pub fn command(config: &ImageConfig, args: &[String]) -> Result<Vec<String>, SpecError> {
    let mut cmd = config.entrypoint.clone();
    if args.is_empty() {
        cmd.extend(config.cmd.iter().cloned());
    } else {
        cmd.extend(args.iter().cloned());
    }
    if cmd.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(cmd)
}

/// The environment: the image's, overridden by the flags' (`KEY` alone copies the host's value
/// through `host_env`, or is dropped when unset), with a default PATH.
pub fn environment(
    image_env: &[String],
    flags: &[String],
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    for e in image_env {
        set(e.clone());
    }
    for e in flags {
        match e.split_once('=') {
            Some(("", _)) => return Err(SpecError::BadEnv(e.clone())),
            Some(_) => set(e.clone()),
            None if e.is_empty() => return Err(SpecError::BadEnv(e.clone())),
            None => {
                if let Some(v) = host_env(e) {
                    set(format!("{e}={v}"));
                }
            }
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    Ok(env)
}

/// `UID[:GID]` (numeric, or `root`); `None` is root.
pub fn parse_user(user: Option<&str>) -> Result<(u32, u32), SpecError> {
    let Some(u) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let bad = || SpecError::BadUser(u.to_owned());
    let num = |s: &str| -> Result<u32, SpecError> {
        if s == "root" {
            Ok(0)
        } else {
            s.parse().map_err(|_| bad())
        }
    };
    match u.split_once(':') {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => {
            let uid = num(u)?;
            Ok((uid, uid))
        }
    }
}

/// The OCI process for `config` with `opts`.
pub fn process(config: &ImageConfig, opts: &ProcessOptions) -> Result<Process, SpecError> {
    let args = command(config, &opts.args)?;
    let env = environment(&config.env, &opts.env, |k| std::env::var(k).ok())?;
    let cwd = opts
        .workdir
        .clone()
        .or_else(|| config.working_dir.clone())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(SpecError::BadWorkdir(cwd));
    }
    let (uid, gid) = parse_user(opts.user.as_deref().or(config.user.as_deref()))?;
    let defaults = Process::default();
    let mut b = ProcessBuilder::default()
        .terminal(opts.terminal)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .no_new_privileges(true);
    if let Some(caps) = defaults.capabilities() {
        b = b.capabilities(caps.clone());
    }
    if let Some(r) = defaults.rlimits() {
        b = b.rlimits(r.clone());
    }
    Ok(b.build()?)
}

/// The container's runtime spec: `process`, the image's root (the agent sets the path), a
/// hostname, the usual mounts, and pid/ipc/uts/mount namespaces (the VM is the isolation
/// boundary; its network is the VM's).
pub fn runtime_spec(process: Process, hostname: &str) -> Result<Spec, SpecError> {
    let mount = |dest: &str, typ: &str, src: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .build()
    };
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ];
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: Some("/srv".into()),
            user: None,
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn args_replace_cmd_and_keep_entrypoint() {
        let mut c = image();
        assert_eq!(command(&c, &[]).unwrap(), s(&["sh"]));
        assert_eq!(
            command(&c, &s(&["echo", "hi"])).unwrap(),
            s(&["echo", "hi"])
        );
        c.entrypoint = s(&["/bin/tini", "--"]);
        assert_eq!(command(&c, &[]).unwrap(), s(&["/bin/tini", "--", "sh"]));
        assert_eq!(
            command(&c, &s(&["true"])).unwrap(),
            s(&["/bin/tini", "--", "true"])
        );
        c.entrypoint.clear();
        c.cmd.clear();
        assert!(matches!(command(&c, &[]), Err(SpecError::NoCommand)));
    }

    #[test]
    fn env_flags_override_image_and_path_defaults() {
        let host = |k: &str| (k == "HOSTVAR").then(|| "h".to_owned());
        let env = environment(
            &s(&["PATH=/bin", "A=1"]),
            &s(&["A=2", "B=x=y", "HOSTVAR", "UNSET"]),
            host,
        )
        .unwrap();
        assert_eq!(env, s(&["PATH=/bin", "A=2", "B=x=y", "HOSTVAR=h"]));
        let env = environment(&[], &[], host).unwrap();
        assert_eq!(env, s(&[DEFAULT_PATH]));
        assert!(matches!(
            environment(&[], &s(&["=v"]), host),
            Err(SpecError::BadEnv(_))
        ));
    }

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user(None).unwrap(), (0, 0));
        assert_eq!(parse_user(Some("root")).unwrap(), (0, 0));
        assert_eq!(parse_user(Some("1000")).unwrap(), (1000, 1000));
        assert_eq!(parse_user(Some("1000:50")).unwrap(), (1000, 50));
        let e = parse_user(Some("nobody")).unwrap_err().to_string();
        assert!(e.contains("numeric"), "{e}");
    }

    #[test]
    fn spec_merges_image_and_flags() {
        let opts = ProcessOptions {
            args: s(&["env"]),
            env: s(&["X=1"]),
            workdir: Some("/tmp".into()),
            user: Some("5:6".into()),
            terminal: false,
        };
        let spec = runtime_spec(process(&image(), &opts).unwrap(), "box").unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let p = &v["process"];
        assert_eq!(p["args"], serde_json::json!(["env"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"]["uid"], 5);
        assert_eq!(p["user"]["gid"], 6);
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=1", "X=1"]));
        assert_eq!(v["hostname"], "box");
        assert_eq!(v["root"]["path"], "rootfs");
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ns, s(&["pid", "ipc", "uts", "mount"]));
        // The image's workdir when no flag.
        let p = process(&image(), &ProcessOptions::default()).unwrap();
        assert_eq!(p.cwd().to_str(), Some("/srv"));
        let bad = ProcessOptions {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            process(&image(), &bad),
            Err(SpecError::BadWorkdir(_))
        ));
    }
}
