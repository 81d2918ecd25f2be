"""vidmask: efficient video-language pretraining with semantic masking.

`import vidmask` gives the library (data, models, masking, objectives,
metrics). The trainer, the command line and distributed launch code live in
`vidmask.train` and `vidmask.cli` and are never imported from here.
"""

__version__ = "0.1.0"
