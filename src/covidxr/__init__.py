"""covidxr: transfer-learning chest X-ray classifiers for COVID-19 research.
The package root holds the version and the research-only notice; it must not import any submodule.

Research software, not a diagnostic device: nothing it outputs may be used to diagnose,
treat or triage a patient.
"""

__version__ = "0.1.0"

RESEARCH_ONLY = (
    "covidxr is research software, not a medical device: its outputs must not be used "
    "for diagnosis, treatment or triage."
)
