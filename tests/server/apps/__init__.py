"""Small applications for the tests of application versions and state checks:
the same model class (``Board``) in two versions of its code, and one whose
command is not deterministic."""
