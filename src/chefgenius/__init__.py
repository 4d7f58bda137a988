"""chefgenius: recipe-generation training that resumes bit-exactly after any stop."""

__version__ = "0.1.0"
