"""Launchers: whichever started the processes (torchrun, SLURM's srun, LSF's jsrun, Kubeflow), only the
job's first process claims a run folder, so a multi-process run logs into one ``version_N``.

Each launcher's environment is faked and the CLI builds its Trainer (no process group is started): the
rank comes from the cluster environment Lightning detects, as it would under the real launcher. MPI is
not among them: Lightning detects it only inside a real ``mpirun`` (mpi4py's world larger than one).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from helpers import REPO

from imdb_transformer.cli import build_cli


def launcher_env(launcher: str, rank: int, tmp_path: Path) -> dict[str, str]:
    r = str(rank)
    if launcher == "torchrun":
        return {"RANK": r, "LOCAL_RANK": r, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    if launcher == "slurm":  # srun --ntasks 2: no LOCAL_RANK, no NODE_RANK
        return {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": r, "SLURM_LOCALID": r,
                "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "node1",
                "SLURM_JOB_ID": "7"}  # fmt: skip
    if launcher == "lsf":  # jsrun: the hosts from a rank file, the first line being the launch host
        hosts = tmp_path / "rankfile"
        hosts.write_text("launchhost\n" + f"{socket.gethostname()}\n" * 2)
        return {"LSB_JOBID": "7", "LSB_DJOB_RANKFILE": str(hosts), "JSM_NAMESPACE_LOCAL_RANK": r,
                "JSM_NAMESPACE_SIZE": "2", "JSM_NAMESPACE_RANK": r}  # fmt: skip
    # Kubeflow's PyTorchJob: one process per pod; Lightning needs its environment named (no detection)
    return {"KUBERNETES_PORT": "tcp://10.0.0.1:443", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
            "WORLD_SIZE": "2", "RANK": r}  # fmt: skip


@pytest.fixture
def ranks_restored():
    """``set_world_ranks`` stores the rank in Lightning's module-level ``rank_zero_only``: put back 0."""
    from lightning.fabric.utilities import rank_zero as fabric_rank
    from lightning.pytorch.utilities import rank_zero as pytorch_rank

    yield
    fabric_rank.rank_zero_only.rank = pytorch_rank.rank_zero_only.rank = 0


LAUNCHERS = {
    "torchrun": "TorchElasticEnvironment",
    "slurm": "SLURMEnvironment",
    "lsf": "LSFEnvironment",
    "kubeflow": "KubeflowEnvironment",
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_only_the_first_process_of_a_launch_claims_a_run_folder(
    launcher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranks_restored
) -> None:
    monkeypatch.setattr(sys, "argv", ["imdb-transformer"])
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "LSB_JOBID"):
        monkeypatch.delenv(name, raising=False)
    devices, nodes = ("1", "2") if launcher == "kubeflow" else ("2", "1")
    args = [
        "--config", str(REPO / "configs/pretrain.yaml"), "--config", str(REPO / "configs/tiny.yaml"),
        "--data.source", "unused", "--trainer.default_root_dir", str(tmp_path / "root"),
        "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--trainer.devices", devices, "--trainer.num_nodes", nodes,
    ]  # fmt: skip
    if launcher == "kubeflow":
        args += ["--trainer.plugins", "lightning.pytorch.plugins.environments.KubeflowEnvironment"]
    claimed = []
    for rank in (1, 0):  # the other process first: it must not take version_0
        with monkeypatch.context() as env:
            for key, value in launcher_env(launcher, rank, tmp_path).items():
                env.setenv(key, value)
            cli = build_cli(args, run=False)
            assert type(cli.trainer.strategy.cluster_environment).__name__ == LAUNCHERS[launcher]
            assert cli.trainer.global_rank == rank
            claimed.append(cli.claimed_run)
    assert claimed == [None, tmp_path / "root" / "lightning_logs" / "version_0"]
    assert sorted(p.name for p in (tmp_path / "root" / "lightning_logs").iterdir()) == ["version_0"]
