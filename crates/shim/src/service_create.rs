//! The task requests that change the pod: `Create` (the VM booted by the pod's first container,
//! a container's rootfs and binds added to the pod's share, the container created by the
//! agent), an exec's start, `Delete` (the VM shut down with the pod's sandbox), and the stats.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim as shim;
use shim::api;
use shim::protos::cgroups_v2::metrics::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use shim::protos::ttrpc::Code;
use shim::TtrpcResult;

use crx_proto::{ContainerStats, Request, StreamKind};
use crx_runtime::oci::bundle::guest_spec;
use crx_runtime::pod::share;
use crx_runtime::relay::open_stdio;

use crate::events::Event;
use crate::service::{bundle, call, err, kind, pod_dir, Inner};
use crate::stdio::{Copies, Paths};
use crate::task::{Container, Phase, PodHandle, Proc};

/// Creates container `req.id`: its rootfs mounted, the pod booted if it is the pod's first,
/// the container created in the VM (none for the sandbox); the pid reported (the VMM's).
pub fn create(inner: &Inner, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
    let (dir, spec) = bundle(&req.bundle)?;
    log::info!("create {} ({} rootfs mounts)", req.id, req.rootfs.len());
    if inner.lock().containers.contains_key(&req.id) {
        return Err(err(Code::ALREADY_EXISTS, &req.id));
    }
    let rootfs = crate::mounts::rootfs_dir(&dir, &spec);
    let mounted = !req.rootfs.is_empty();
    if mounted {
        crate::mounts::mount_all(&req.rootfs, &rootfs)
            .map_err(|e| err(Code::INTERNAL, format!("{e:#}")))?;
    }
    let paths = Paths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };
    let created = create_in(inner, &req.id, &spec, &rootfs, &paths);
    let (pod, is_sandbox, copies) = match created {
        Ok(c) => c,
        Err(e) => {
            if mounted {
                crate::mounts::unmount_rootfs(&dir);
            }
            return Err(e);
        }
    };
    let mut init = Proc::new(paths.clone());
    init.copies = copies;
    inner.lock().containers.insert(
        req.id.clone(),
        Container {
            bundle: dir,
            is_sandbox,
            mounted,
            init,
            execs: HashMap::new(),
            oom_kills: 0,
        },
    );
    inner.events.publish(Event::Create {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        pid: pod.vmm_pid,
        io: (paths.stdin, paths.stdout, paths.stderr, paths.terminal),
    });
    Ok(pod.vmm_pid)
}

fn create_in(
    inner: &Inner,
    id: &str,
    spec: &serde_json::Value,
    rootfs: &Path,
    paths: &Paths,
) -> TtrpcResult<(PodHandle, bool, Option<Copies>)> {
    let (is_sandbox, sandbox) = kind(spec, id);
    let pod = pod_for(inner, id, &sandbox, spec)?;
    if is_sandbox {
        return Ok((pod, true, None));
    }
    let copies = create_guest(&pod, id, spec, rootfs, paths);
    if copies.is_err() && id == sandbox {
        // The pod booted for this container alone: it goes with it.
        let _ = pod.shutdown();
        inner.lock().pod = None;
    }
    Ok((pod, false, Some(copies?)))
}

/// The pod's VM for a container of pod `sandbox`: booted now by the pod's first container
/// (the sandbox, or a container that is its own pod), else the one running.
fn pod_for(
    inner: &Inner,
    id: &str,
    sandbox: &str,
    spec: &serde_json::Value,
) -> TtrpcResult<PodHandle> {
    let mut s = inner.lock();
    if let Some(p) = &s.pod {
        if p.dir.id != sandbox {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{id}: pod {sandbox} is not this shim's"),
            ));
        }
        if !p.alive() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("pod {sandbox}: its VM is gone"),
            ));
        }
        return Ok(p.clone());
    }
    if id != sandbox {
        return Err(err(
            Code::NOT_FOUND,
            format!("{id}: pod sandbox {sandbox} not created"),
        ));
    }
    let dir = pod_dir(inner.namespace(), sandbox);
    log::info!("booting pod {sandbox} in {}", dir.dir.display());
    let pod = PodHandle::boot(dir.clone(), spec.clone()).map_err(|e| {
        let _ = crx_runtime::pod::cleanup(&dir);
        err(Code::UNKNOWN, format!("booting the pod's VM: {e:#}"))
    })?;
    log::info!("pod {sandbox} booted: crx-vmm pid {}", pod.vmm_pid);
    s.pod = Some(pod.clone());
    Ok(pod)
}

/// Creates container `id` in the VM: its rootfs and binds in the pod's share, its streams
/// opened and copied, the agent's `CreateContainer`.
fn create_guest(
    pod: &PodHandle,
    id: &str,
    spec: &serde_json::Value,
    rootfs: &Path,
    paths: &Paths,
) -> TtrpcResult<Copies> {
    let mut gspec = guest_spec(spec);
    if joins_uts(spec) && gspec["hostname"].is_null() {
        if let Some(h) = &pod.hostname {
            // A container joining the pod's UTS namespace gets a fresh one with its name.
            gspec["hostname"] = h.clone().into();
        }
    }
    let internal = |e: crx_runtime::pod::PodError| err(Code::INTERNAL, crx_proto::chain(&e));
    let (grootfs, left_out) =
        share::add(&pod.dir.share(), id, rootfs, &mut gspec).map_err(internal)?;
    if !left_out.is_empty() {
        log::warn!(
            "{id}: bind mounts without a source left out: {}",
            left_out.join(", ")
        );
    }
    let created = (|| {
        let agent_err = |e: crx_runtime::RuntimeError| err(Code::UNKNOWN, crx_proto::chain(&e));
        let terminal = gspec["process"]["terminal"].as_bool() == Some(true);
        let copies = match terminal {
            true => Copies::pty(
                pod.agent
                    .open_stream(id, None, StreamKind::Pty)
                    .map_err(agent_err)?,
                paths,
            ),
            false => Copies::stdio(open_stdio(&pod.agent, id, None).map_err(agent_err)?, paths),
        };
        call(
            pod,
            Request::CreateContainer {
                id: id.to_owned(),
                spec: gspec,
                rootfs: grootfs,
            },
        )?;
        Ok(copies)
    })();
    if created.is_err() {
        let _ = share::remove(&pod.dir.share(), id);
    }
    created
}

/// Whether the spec joins a UTS namespace by path (the pod's).
fn joins_uts(spec: &serde_json::Value) -> bool {
    spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["type"] == "uts" && n["path"].as_str().is_some_and(|p| !p.is_empty()))
}

/// Starts exec `exec_id` of `id` with `process`: its streams opened and copied, `Exec`.
pub fn exec(
    pod: &PodHandle,
    id: &str,
    exec_id: &str,
    mut process: serde_json::Value,
    paths: &Paths,
) -> TtrpcResult<Copies> {
    let agent_err = |e: crx_runtime::RuntimeError| err(Code::UNKNOWN, crx_proto::chain(&e));
    process["terminal"] = paths.terminal.into();
    let copies = match paths.terminal {
        true => Copies::pty(
            pod.agent
                .open_stream(id, Some(exec_id), StreamKind::Pty)
                .map_err(agent_err)?,
            paths,
        ),
        false => Copies::stdio(
            open_stdio(&pod.agent, id, Some(exec_id)).map_err(agent_err)?,
            paths,
        ),
    };
    call(
        pod,
        Request::Exec {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
        },
    )?;
    Ok(copies)
}

/// Deletes an exec, or a container (its guest container, its share entries, its rootfs; the
/// pod's VM with the pod's sandbox).
pub fn delete(inner: &Inner, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
    let not_found = || err(Code::NOT_FOUND, format!("{id} {exec_id}: not found"));
    let (c, pod) = {
        let mut s = inner.lock();
        let pid = s.pod.as_ref().map_or(0, |p| p.vmm_pid);
        let c = s.containers.get_mut(id).ok_or_else(not_found)?;
        if !exec_id.is_empty() {
            let p = c.execs.get(exec_id).ok_or_else(not_found)?;
            if matches!(p.phase, Phase::Running | Phase::Paused) {
                return Err(err(Code::FAILED_PRECONDITION, "exec still running"));
            }
            let p = c.execs.remove(exec_id).ok_or_else(not_found)?;
            return Ok(response(pid, &p));
        }
        if matches!(c.init.phase, Phase::Running | Phase::Paused) && c.init.exit.is_none() {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("{id}: still running"),
            ));
        }
        let c = s.containers.remove(id).ok_or_else(not_found)?;
        (c, s.pod.clone())
    };
    if let Some(pod) = &pod {
        if !c.is_sandbox && pod.alive() {
            let _ = call(
                pod,
                Request::Remove {
                    id: id.to_owned(),
                    force: true,
                },
            );
        }
        if let Err(e) = share::remove(&pod.dir.share(), id) {
            log::warn!("{id}: {}", crx_proto::chain(&e));
        }
    }
    if c.mounted {
        crate::mounts::unmount_rootfs(&c.bundle);
    }
    if let Some(pod) = pod.filter(|p| p.dir.id == id) {
        if let Err(e) = pod.shutdown() {
            log::warn!("pod {id}: {e:#}");
        }
        inner.lock().pod = None;
    }
    let pid = 0;
    let r = response(pid, &c.init);
    inner.events.publish(Event::Delete {
        id: id.to_owned(),
        pid,
        status: r.exit_status,
        at: r.exited_at.clone().unwrap_or_default(),
    });
    Ok(r)
}

fn response(pid: u32, p: &Proc) -> api::DeleteResponse {
    api::DeleteResponse {
        pid,
        exit_status: p.exit.as_ref().map_or(0, |e| e.0),
        exited_at: Some(
            p.exit
                .as_ref()
                .map_or_else(crate::events::now, |e| e.1.clone()),
        )
        .into(),
        ..Default::default()
    }
}

/// The agent's stats as containerd's cgroup v2 metrics.
pub fn metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    m.cpu = Some(CPUStat {
        usage_usec: s.cpu_usage_ns / 1000,
        user_usec: s.cpu_user_ns / 1000,
        system_usec: s.cpu_system_ns / 1000,
        ..Default::default()
    })
    .into();
    m.memory = Some(MemoryStat {
        usage: s.memory_bytes,
        usage_limit: s.memory_limit_bytes.unwrap_or(u64::MAX),
        anon: s.memory_anon_bytes,
        file: s.memory_file_bytes,
        inactive_file: s.memory_inactive_file_bytes,
        ..Default::default()
    })
    .into();
    m.memory_events = Some(MemoryEvents {
        max: s.memory_max_events,
        oom: s.oom_events,
        oom_kill: s.oom_kills,
        ..Default::default()
    })
    .into();
    m.pids = Some(PidsStat {
        current: s.pids,
        limit: s.pids_limit.unwrap_or(0),
        ..Default::default()
    })
    .into();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uts_by_path_is_the_pods() {
        assert!(joins_uts(
            &json!({"linux": {"namespaces": [{"type": "uts", "path": "/proc/1/ns/uts"}]}})
        ));
        assert!(!joins_uts(
            &json!({"linux": {"namespaces": [{"type": "uts"}]}})
        ));
        assert!(!joins_uts(&json!({"linux": {"namespaces": "x"}})));
    }

    #[test]
    fn metrics_carry_the_agents_numbers() {
        let m = metrics(&ContainerStats {
            cpu_usage_ns: 5_000_000,
            memory_bytes: 4096,
            pids: 2,
            memory_limit_bytes: None,
            pids_limit: Some(10),
            cpu_user_ns: 3_000_000,
            memory_inactive_file_bytes: 1024,
            oom_kills: 2,
            ..ContainerStats::default()
        });
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.cpu.user_usec, 3000);
        assert_eq!(m.memory.inactive_file, 1024);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.pids.limit, 10);
    }
}
