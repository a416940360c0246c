"""What the notebooks call in a line or two and a learner need not read: each module one job
(README: the module map). Nothing here is imported by ``helpers``' own modules, and importing
a module configures nothing."""
