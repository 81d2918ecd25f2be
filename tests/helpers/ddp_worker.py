"""`vidmask` under torchrun with one rank made to misbehave on purpose (tests only).

    torchrun ... tests/helpers/ddp_worker.py FAULT RANK vidmask-args...

FAULT is applied on rank RANK only:
  clock   its clock jumps a day ahead once the first step has started (train.time_limit_min is past there)
  bad     every sample it reads is unreadable
  raise   its batch preparation raises at the third step
  none    nothing (a plain run)
"""

import os
import sys
import time


def main() -> int:
    fault, target, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if int(os.environ.get("RANK", "0")) == target:
        if fault == "clock":
            import vidmask.train.engine as engine
            import vidmask.train.run as run

            class AheadClock:
                """Right until the first step starts, a day ahead from then on."""

                ahead = False

                def time(self):
                    return time.time() + (86400.0 if self.ahead else 0.0)

            clock = engine.time = AheadClock()
            original_count = run.Hooks.count_samples

            def count_samples(self, *a):
                clock.ahead = True
                return original_count(self, *a)

            run.Hooks.count_samples = count_samples
        elif fault == "bad":
            import vidmask.data.dataset as dataset
            from vidmask.data.video import VideoError

            def unreadable(path, *a, **k):
                raise VideoError(f"{path}: simulated unreadable file")

            for name in ("decode_sampled", "decode_frames"):
                if hasattr(dataset, name):
                    setattr(dataset, name, unreadable)
        elif fault == "raise":
            import vidmask.train.run as run

            seen = [0]
            original = run.Hooks.prepare

            def prepare(self, batch):
                seen[0] += 1
                if seen[0] == 3:
                    raise ValueError("simulated failure while preparing the batch")
                return original(self, batch)

            run.Hooks.prepare = prepare
    from vidmask.cli import main as vidmask_main

    return vidmask_main(args)


if __name__ == "__main__":
    sys.exit(main())
