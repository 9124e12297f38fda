"""Object storage: one small store interface over local folders, S3 and OCI (lean SigV4 or boto3) and PAR URLs."""
