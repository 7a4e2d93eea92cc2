"""The campaign file: round trip, per-item labels, model integrity, atomic commits, lock."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import h5py
import numpy as np
import pytest
from ase.build import bulk

from pyacemaker_hpc.campaign import Campaign, CampaignError, CampaignLocked, cache_label, cached_labels
from pyacemaker_hpc.core.models import DONE, FAILED, PENDING, Label, TrainedModel, Uncertainty, structure_uid


def _structures(n=5):
    out = []
    for k in range(n):
        a = bulk("Cu", cubic=True).repeat((1, 1, 1 + k % 2))
        a.rattle(0.05, seed=k)
        a.info["provenance"] = f"test:{k}"
        out.append(a)
    return out


def test_structures_round_trip(tmp_path):
    s = _structures()
    with Campaign(tmp_path / "c.h5", config_yaml="a: 1\n") as camp:
        uids = camp.write_structures("pool", s)
        back = camp.read_structures("pool")
        assert camp.attrs()["config_yaml"] == "a: 1\n"
    assert uids == [structure_uid(a) for a in s]
    for a, b in zip(s, back):
        assert np.allclose(a.positions, b.positions) and np.allclose(a.cell, b.cell)
        assert (a.numbers == b.numbers).all() and b.info["provenance"] == a.info["provenance"]
    with h5py.File(tmp_path / "c.h5", "r") as f:  # documented layout, readable by plain h5py
        assert f["structures/pool/offsets"][-1] == sum(len(a) for a in s)
        assert f["structures/pool/uid"].shape == (5,)


def test_labels_per_item_and_failed(tmp_path):
    s = _structures(3)
    with Campaign(tmp_path / "c.h5") as camp:
        camp.write_structures("dft", s)
        camp.init_labels("dft", "dft")
        f0 = np.ones((len(s[0]), 3))
        camp.put_labels("dft", "dft", {0: Label(energy=-1.0, forces=f0, stress=np.arange(6.0))})
        camp.put_labels("dft", "dft", {2: Label.failed("SCF not converged after 100 steps")})
        assert camp.label_counts("dft", "dft") == {DONE: 1, FAILED: 1, PENDING: 1}
        labs = camp.read_labels("dft", "dft")
        assert labs[0].energy == -1.0 and np.allclose(labs[0].forces, 1) and np.allclose(labs[0].stress, np.arange(6))
        assert labs[2].status == FAILED and "SCF" in labs[2].error
        usable = camp.labelled_set("dft", "dft")
        assert len(usable) == 1  # failed and pending never reach training data
        camp.init_labels("dft", "dft", keep_existing=True)  # a restart keeps finished items
        assert camp.label_counts("dft", "dft")[DONE] == 1


def test_non_finite_label_is_not_usable(tmp_path):
    s = _structures(1)
    with Campaign(tmp_path / "c.h5") as camp:
        camp.write_structures("x", s)
        camp.init_labels("x", "dft")
        camp.put_labels("x", "dft", {0: Label(energy=float("nan"), forces=np.zeros((4, 3)))})
        assert len(camp.labelled_set("x", "dft")) == 0


def test_oracle_cache(tmp_path):
    with Campaign(tmp_path / "c.h5") as camp:
        cache_label(camp, "dft", "k1", "uidA", Label(energy=2.0, forces=np.zeros((2, 3))))
        cache_label(camp, "dft", "k1", "uidB", Label.failed("exit code 137"))
        c = cached_labels(camp, "dft", "k1")
        assert c["uidA"].energy == 2.0 and c["uidB"].status == FAILED
        assert cached_labels(camp, "dft", "other") == {}


def test_model_sha_checked(tmp_path):
    path = tmp_path / "c.h5"
    with Campaign(path) as camp:
        camp.store_model(TrainedModel("ace", "ace", {".yaml": b"elements: [Cu]\n"}, {"rmse": 1.5}))
        m = camp.load_model("ace")
        assert m.files[".yaml"] == b"elements: [Cu]\n" and m.metrics == {"rmse": 1.5}
    with h5py.File(path, "a") as f:  # tamper with the stored bytes
        del f["models/ace/.yaml"]
        ds = f.create_dataset("models/ace/.yaml", data=np.void(b"elements: [Zn]\n"))
        ds.attrs["sha256"] = "0" * 64
    with pytest.raises(CampaignError, match="sha256 mismatch"):
        Campaign(path, readonly=True).load_model("ace")


def test_uncertainty_and_json(tmp_path):
    with Campaign(tmp_path / "c.h5") as camp:
        camp.write_uncertainty("sel", Uncertainty(np.array([0.1, 0.2]), np.array([1.0, 2.0])))
        assert np.allclose(camp.read_uncertainty("sel").force_std, [1, 2])
        camp.write_json("metrics/x", {"a": 1})
        assert camp.read_json("metrics/x") == {"a": 1}
        assert camp.read_json("metrics/none", default=[]) == []


def test_failed_transaction_leaves_file_unchanged(tmp_path):
    with Campaign(tmp_path / "c.h5") as camp:
        camp.write_json("metrics/a", 1)
        with pytest.raises(ZeroDivisionError):
            with camp.transaction() as f:
                f.create_group("half_written")
                1 / 0
        assert not camp.exists("half_written") and camp.read_json("metrics/a") == 1
        assert not camp._tmp.exists()


def _holder(path, started):
    _held = Campaign(path)  # keeps the lock while this process lives
    started.set()
    time.sleep(60)


def test_lock_refuses_second_job_and_dies_with_holder(tmp_path):
    path = tmp_path / "c.h5"
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_holder, args=(path, started))
    p.start()
    assert started.wait(30)
    with pytest.raises(CampaignLocked, match=f"pid {p.pid}"):
        Campaign(path)
    # reading while a job holds the campaign works
    assert Campaign(path, readonly=True).steps() == {}
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    Campaign(path).close()  # no manual cleanup needed after the holder died


def _writer(path, n):
    camp = Campaign(path)
    s = _structures(2)
    camp.write_structures("dft", s)
    camp.init_labels("dft", "dft")
    for k in range(n):
        camp.write_json(f"metrics/m{k}", {"k": k, "blob": list(range(2000))})


def test_sigkill_during_writes_never_corrupts(tmp_path):
    """Kill a writer at random moments: the file always opens and holds a prefix of commits."""
    ctx = mp.get_context("fork")
    rng = np.random.default_rng(0)
    for trial in range(8):
        path = tmp_path / f"k{trial}.h5"
        p = ctx.Process(target=_writer, args=(path, 400))
        p.start()
        time.sleep(float(rng.uniform(0.3, 1.5)))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        if not path.exists():
            continue
        camp = Campaign(path, readonly=True)
        with h5py.File(path, "r") as f:
            keys = sorted(int(k[1:]) for k in f["metrics"].keys()) if "metrics" in f else []
        assert keys == list(range(len(keys)))  # commits are all-or-nothing, in order
        camp.steps()


def test_unreadable_file_points_to_snapshot(tmp_path):
    path = tmp_path / "c.h5"
    with Campaign(path) as camp:
        camp.write_json("metrics/a", 1)
        camp.write_json("metrics/b", 2)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(CampaignError) as e:
        Campaign(path)
    assert "c.h5.prev" in str(e.value) and "cp " in str(e.value)
    assert Campaign(tmp_path / "c.h5.prev", readonly=True).read_json("metrics/a") == 1


def test_fresh_start_discards_a_stale_resumable_output(tmp_path):
    """A step started with new inputs and killed before it overwrote the output an earlier
    config left must not, on resume, take that output for its own (seen on a campaign
    copied for a variant: step 3 kept the copied naive model for a multihead config)."""
    from pyacemaker_hpc.steps.context import Step, StepContext, run_step

    class Fit(Step):
        name = "fit"
        value, crash = "a", False

        def inputs(self, ctx):
            return {"value": self.value}

        def stale_outputs(self, ctx):
            return ["models/fit_0"]

        def run(self, ctx):
            if ctx.resuming and ctx.camp.has_model("fit_0"):
                return ctx.camp.load_model("fit_0").files[".txt"].decode()
            if self.crash:
                raise KeyboardInterrupt
            ctx.camp.store_model(TrainedModel(name="fit_0", kind="toy", files={".txt": self.value.encode()}))
            return self.value

    with Campaign(tmp_path / "c.h5") as camp:
        ctx = StepContext(cfg=None, camp=camp, farm=None, workdir=tmp_path, outdir=tmp_path)
        step = Fit()
        assert run_step(step, ctx) and camp.step_info("fit")["outputs_sha256"] == "a"
        step.value, step.crash = "b", True  # new inputs, killed before its model is stored
        with pytest.raises(KeyboardInterrupt):
            run_step(step, ctx)
        assert camp.step_info("fit")["status"] == "interrupted" and not camp.has_model("fit_0")
        step.crash = False
        assert run_step(step, ctx) and camp.step_info("fit")["outputs_sha256"] == "b"
        assert camp.load_model("fit_0").files[".txt"] == b"b"


def test_new_dft_values_on_the_same_picks_change_step2s_output():
    """Step 2's output hash enters steps 3-7's inputs: new DFT settings that relabel the same
    picks (new energies, forces or stress; same structures and statuses) must change it, or
    the steps trained on the old labels are taken for up to date. Identical labels keep it."""
    from pyacemaker_hpc.core.models import LabelledSet
    from pyacemaker_hpc.steps.s2_active_learning import labels_digest

    structures = _structures(3)
    for a in structures:
        a.info["uid"] = structure_uid(a)

    def labelled(shift=0.0, force_scale=1.0, stress_shift=0.0):
        labels = [Label(energy=-3.5 * len(a) + shift, forces=force_scale * np.full((len(a), 3), 0.1 * k),
                        stress=np.full(6, 0.01 + stress_shift)) for k, a in enumerate(structures)]
        labels.append(Label.failed("scf"))
        return LabelledSet([*structures, structures[0]], labels)

    ref = labels_digest(labelled())
    assert labels_digest(labelled()) == ref
    assert labels_digest(labelled(shift=1e-4)) != ref
    assert labels_digest(labelled(force_scale=1.01)) != ref
    assert labels_digest(labelled(stress_shift=1e-5)) != ref
