#!/bin/bash
# Re-measures every README figure with this branch's code (run from the repo root).
cd /work/perf
export PYTHONPATH=/work/perf
P=/work/main/.venv/bin/python
mkdir -p runs
for b in train_step scoring sampler; do $P benchmarks/$b.py --json=runs/bench_${b}_cpu.json > runs/bench_$b.log 2>&1; done
rm -rf /tmp/perf_cache
{ time $P launch/train.py --config=configs/indicator.py --config.cache_dir=/tmp/perf_cache_fresh --workdir=runs/fresh ; } > runs/m_fresh.log 2>&1
{ time $P launch/train.py --config=configs/indicator.py --config.trainer.progress=False ; } > runs/m_main.log 2>&1
{ time $P launch/train.py --config=configs/distill.py --config.trainer.progress=False ; } > runs/m_distill.log 2>&1
$P launch/train.py --config=configs/distill.py --config.distill.rare_share=0 --workdir=runs/distill_nora_only --config.trainer.progress=False > runs/m_distill_nora_only.log 2>&1
$P launch/train.py --config=configs/distill.py --config.distill.nora_replay=False --workdir=runs/distill_dora_only --config.trainer.progress=False > runs/m_distill_dora_only.log 2>&1
{ time $P launch/train.py --config=configs/indicator.py:handover --config.trainer.progress=False ; } > runs/m_handover.log 2>&1
$P launch/train.py --config=configs/clipped.py --config.trainer.progress=False > runs/m_clipped.log 2>&1
$P launch/train.py --config=configs/contrastive.py --config.trainer.progress=False > runs/m_contrastive.log 2>&1
{ time $P launch/train.py --config=configs/indicator.py:beta_sweep --config.trainer.progress=False ; } > runs/m_beta.log 2>&1
$P launch/train.py --config=configs/indicator.py --config.trainer.stop_kl=0 --workdir=runs/indicator_nocap --config.trainer.progress=False > runs/m_nocap.log 2>&1
$P launch/train.py --config=configs/indicator.py:seeds --config.trainer.progress=False > runs/m_seeds.log 2>&1
echo done > runs/m_done
{ time $P launch/compare.py --workdir=runs/compare ; } > runs/compare.log 2>&1
echo done > runs/compare_done
