"""Fuzzing of the DICOM parse-and-validate path.

``make fuzz`` runs tests/fuzz/fuzz_dicom.py (100,000 inputs); tests/unit/test_fuzz_dicom.py a short run.
"""
