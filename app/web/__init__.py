"""The screens served by the service: the citizen's code page, the gate scanner and the operator console.

Static files (static/) are served from memory by pages.py; backend.py is the reference mini-program
backend route the demo's code page calls; operator.py holds the console's read routes.
"""
