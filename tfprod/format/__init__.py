"""What a model version directory holds, and how to read it.

The one place below both the writer of versions (`tfprod.export`) and their readers (the
servables, the security checks, `tfprod inspect`): file names and the readers of the MetaGraph's
signatures and of the audit metadata. Nothing here loads a model or imports the server.
"""
