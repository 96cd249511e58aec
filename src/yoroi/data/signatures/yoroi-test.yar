/*
 * Yoroi's own test rules, shipped with the package.
 */

rule EICAR_Test_File
{
    meta:
        description = "The EICAR anti-virus test string, alone (68 bytes, optionally followed by whitespace) or inside other data"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"

    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

    condition:
        $eicar
}

rule ClamAV_Test_File
{
    meta:
        description = "clam.exe, the harmless test program of ClamAV's test files (clamav-testfiles)"

    strings:
        // the scrambled code at offset 0x40 and the section name clam.exe carries
        $code = { BB 71 10 40 00 33 C0 50 50 8B F3 53 53 50 B0 29 40 30 04 66 AC 79 F9 BA 31 00 78 0D AD 50 FF 66 70 0E 1F BE 31 00 E9 E5 FF B4 09 CD 21 B4 4C CD 21 }
        $api = "CLAMessageBoxA"
        $mark = "[CLAMAV]"

    condition:
        $code and ($api or $mark)
}
